//go:build integration

package envoytest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	wasmhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmcanary/llmcanary/internal/noopwasm"
	"github.com/llmcanary/llmcanary/internal/procs"
	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/wasm/filterconfig"
)

// The versions the test routes model "m1" to, stable first.
const (
	model         = "m1"
	stableVersion = "v1"
	canaryVersion = "v2"
	forceKey      = "operator-force-key-1"
)

// buildModule returns the filter module (see procs.WasmModule).
func buildModule(t testing.TB) string {
	t.Helper()
	p, err := procs.WasmModule()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// echo is an upstream that answers with the request headers it received.
type echo struct {
	name string
	srv  *http.Server
	addr string
}

// echoReply is the JSON body an echo upstream answers.
type echoReply struct {
	Server  string              `json:"server"`
	Headers map[string][]string `json:"headers"`
	BodyLen int                 `json:"body_len"`
}

func startEcho(t testing.TB, name string) *echo {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &echo{name: name, addr: l.Addr().String()}
	e.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		hs := map[string][]string{}
		for k, v := range r.Header {
			hs[strings.ToLower(k)] = v
		}
		w.Header().Set("content-type", "application/json")
		w.Header().Set(wire.HeaderServedBy, name)
		json.NewEncoder(w).Encode(echoReply{Server: name, Headers: hs, BodyLen: int(n)})
	})}
	go e.srv.Serve(l)
	t.Cleanup(func() { e.srv.Close() })
	return e
}

// envoy is a running Envoy with two listeners on the same routes: one with
// the wasm filter, one without (the baseline for the overhead benchmark).
type envoy struct {
	proc      *procs.Proc
	dir       string
	url       string // listener with the filter
	plainURL  string // listener without it
	noopURL   string // listener with the no-op module (noopwasm.Module)
	goNoopURL string // listener with the Go no-op module (wasm/cmd/noop)
	holdURL   string // listener with the holding no-op module (noopwasm.HoldingModule)
	adminURL  string
	ports     []int
	wasm      string
	noopWasm  string
	goNoop    string
	holdNoop  string
	serve     []string  // the listeners served (see startEnvoyWith)
	started   time.Time // when the process was started
	stableAdr string
	canaryAdr string
}

// weights are the test route's stable and canary weights (total 10000).
var weights = []uint32{9000, 1000}

func testConfig() filterconfig.Config {
	return filterconfig.Config{
		Identity: []filterconfig.Source{
			{Header: wire.HeaderUserID},
			{Cookie: "session"},
			{BodyField: "user"},
		},
		HashKey:      "test-hash-key-0123456789",
		ForceKeys:    []string{filterconfig.ForceKeyDigest("retired-key-000"), filterconfig.ForceKeyDigest(forceKey)},
		MaxBodyBytes: 64 << 10,
		Models:       []string{model},
	}
}

// startEnvoy starts Envoy with cfg in the filter. Listeners come from a
// watched file (LDS over the filesystem), so updateFilter can change the
// filter configuration the way an xDS update does, without a restart.
func startEnvoy(t testing.TB, cfg filterconfig.Config) *envoy {
	t.Helper()
	return startEnvoyWith(t, cfg, "filtered", "plain", "noop")
}

// startEnvoyWith is startEnvoy serving the listeners named in serve:
// "filtered", "plain", "noop" (noopwasm.Module), "holdnoop" (noopwasm.HoldingModule)
// and "gonoop" (wasm/cmd/noop).
func startEnvoyWith(t testing.TB, cfg filterconfig.Config, serve ...string) *envoy {
	t.Helper()
	bin, err := procs.LookBinary("LLMCANARY_ENVOY", "envoy", "run `make deps`, or put Envoy ≥ 1.36 on PATH")
	if err != nil {
		t.Fatalf("envoy is required for this test: %v", err)
	}
	stable, canary := startEcho(t, stableVersion), startEcho(t, canaryVersion)
	ports, err := procs.FreePorts(6)
	if err != nil {
		t.Fatal(err)
	}
	e := &envoy{
		dir: t.TempDir(), ports: ports, wasm: buildModule(t),
		url:       fmt.Sprintf("http://127.0.0.1:%d", ports[0]),
		plainURL:  fmt.Sprintf("http://127.0.0.1:%d", ports[1]),
		adminURL:  fmt.Sprintf("http://127.0.0.1:%d", ports[2]),
		noopURL:   fmt.Sprintf("http://127.0.0.1:%d", ports[3]),
		goNoopURL: fmt.Sprintf("http://127.0.0.1:%d", ports[4]),
		holdURL:   fmt.Sprintf("http://127.0.0.1:%d", ports[5]),
		stableAdr: stable.addr, canaryAdr: canary.addr, serve: serve,
	}
	e.noopWasm = noopModule(t, noopwasm.Write, e.dir)
	e.holdNoop = noopModule(t, noopwasm.WriteHolding, e.dir)
	if slices.Contains(serve, "gonoop") {
		e.goNoop = goNoopModule(t)
	}
	if err := os.MkdirAll(filepath.Join(e.dir, "lds"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.writeListeners(t, cfg)
	boot, err := e.bootstrap()
	if err != nil {
		t.Fatal(err)
	}
	bootPath := filepath.Join(e.dir, "envoy.json")
	if err := os.WriteFile(bootPath, boot, 0o644); err != nil {
		t.Fatal(err)
	}
	e.started = time.Now()
	e.proc, err = procs.StartProc("envoy", filepath.Join(e.dir, "envoy.log"), bin,
		"-c", bootPath, "--base-id-path", filepath.Join(e.dir, "base-id"), "--use-dynamic-base-id",
		"--log-level", "warn", "--component-log-level", "wasm:info", "--concurrency", "1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.proc.Stop(5 * time.Second)
		if t.Failed() {
			t.Logf("envoy log tail:\n%s", e.proc.Tail(40))
		}
	})
	// A Go module takes V8 many seconds of CPU to compile on a loaded
	// machine; the bound is generous so that slowness shows in the
	// benchmarks rather than as a failure here.
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	for _, l := range e.listeners(t, nil) {
		p := int(l.GetAddress().GetSocketAddress().GetPortValue())
		if err := procs.WaitTCP(ctx, fmt.Sprintf("127.0.0.1:%d", p)); err != nil {
			t.Fatalf("envoy did not open its listeners: %v\n%s", err, e.proc.Tail(40))
		}
	}
	return e
}

func (e *envoy) bootstrap() ([]byte, error) {
	boot := map[string]any{
		"node": map[string]any{"id": "envoytest", "cluster": "envoytest"},
		"admin": map[string]any{"address": map[string]any{"socket_address": map[string]any{
			"address": "127.0.0.1", "port_value": e.ports[2]}}},
		"dynamic_resources": map[string]any{"lds_config": map[string]any{
			"resource_api_version": "V3",
			"path_config_source": map[string]any{
				"path":              filepath.Join(e.dir, "lds", "listeners.json"),
				"watched_directory": map[string]any{"path": filepath.Join(e.dir, "lds")},
			},
		}},
	}
	var clusters []any
	for _, c := range []struct{ name, addr string }{{stableVersion, e.stableAdr}, {canaryVersion, e.canaryAdr}} {
		host, port, _ := net.SplitHostPort(c.addr)
		cl := &clusterv3.Cluster{
			Name:                 c.name,
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
			LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: c.name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: sockAddr(host, port),
				}}}},
			}}},
		}
		js, err := protojson.Marshal(cl)
		if err != nil {
			return nil, err
		}
		var m any
		if err := json.Unmarshal(js, &m); err != nil {
			return nil, err
		}
		clusters = append(clusters, m)
	}
	boot["static_resources"] = map[string]any{"clusters": clusters}
	return json.MarshalIndent(boot, "", "  ")
}

func sockAddr(host, port string) *corev3.Address {
	var p uint32
	fmt.Sscan(port, &p)
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: p},
	}}}
}

// writeListeners writes both listeners as an LDS response and moves it into
// the watched directory atomically, which makes Envoy apply it.
func (e *envoy) writeListeners(t testing.TB, cfg filterconfig.Config) {
	t.Helper()
	wasmFilter, err := filterconfig.HTTPFilter(cfg, e.wasm)
	if err != nil {
		t.Fatal(err)
	}
	e.writeListenersWith(t, wasmFilter, uint32(cfg.WithDefaults().MaxBodyBytes))
}

// writeRawFilterConfig installs a filter whose configuration is raw, as if
// a control plane had skipped validation.
func (e *envoy) writeRawFilterConfig(t testing.TB, raw string) {
	t.Helper()
	f, err := filterconfig.HTTPFilter(testConfig(), e.wasm)
	if err != nil {
		t.Fatal(err)
	}
	var w wasmhttpv3.Wasm
	if err := f.GetTypedConfig().UnmarshalTo(&w); err != nil {
		t.Fatal(err)
	}
	if w.Config.Configuration, err = anypb.New(wrapperspb.String(raw)); err != nil {
		t.Fatal(err)
	}
	if f.ConfigType.(*hcmv3.HttpFilter_TypedConfig).TypedConfig, err = anypb.New(&w); err != nil {
		t.Fatal(err)
	}
	e.writeListenersWith(t, f, filterconfig.DefaultMaxBodyBytes)
}

func (e *envoy) writeListenersWith(t testing.TB, wasmFilter *hcmv3.HttpFilter, maxBody uint32) {
	t.Helper()
	resp := &discoveryv3.DiscoveryResponse{TypeUrl: "type.googleapis.com/envoy.config.listener.v3.Listener"}
	for _, l := range e.listeners(t, wasmFilter, maxBody) {
		if err := l.ValidateAll(); err != nil {
			t.Fatal(err)
		}
		a, err := anypb.New(l)
		if err != nil {
			t.Fatal(err)
		}
		resp.Resources = append(resp.Resources, a)
	}
	js, err := protojson.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(e.dir, "listeners.json.tmp")
	if err := os.WriteFile(tmp, js, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(e.dir, "lds", "listeners.json")); err != nil {
		t.Fatal(err)
	}
}

// listeners returns the listeners e serves (e.serve), the "filtered" one
// with wasmFilter.
func (e *envoy) listeners(t testing.TB, wasmFilter *hcmv3.HttpFilter, maxBody ...uint32) []*listenerv3.Listener {
	t.Helper()
	var limit uint32
	if len(maxBody) > 0 {
		limit = maxBody[0]
	}
	var ls []*listenerv3.Listener
	for _, name := range e.serve {
		switch name {
		case "filtered":
			ls = append(ls, listener(name, e.ports[0], wasmFilter, limit))
		case "plain":
			ls = append(ls, listener(name, e.ports[1], nil, 0))
		case "noop":
			ls = append(ls, listener(name, e.ports[3], noopFilter(t, e.noopWasm, name), 0))
		case "gonoop":
			ls = append(ls, listener(name, e.ports[4], noopFilter(t, e.goNoop, name), 0))
		case "holdnoop":
			// It buffers the body as the filter does, so it gets the same
			// buffer limit.
			ls = append(ls, listener(name, e.ports[5], noopFilter(t, e.holdNoop, name), limit))
		default:
			t.Fatalf("no listener %q", name)
		}
	}
	return ls
}

// noopFilter is an envoy.filters.http.wasm filter running a no-op module
// at path in a VM of its own named name, configured like the llmcanary
// filter otherwise (V8, fail closed).
func noopFilter(t testing.TB, path, name string) *hcmv3.HttpFilter {
	t.Helper()
	f, err := filterconfig.HTTPFilter(testConfig(), path)
	if err != nil {
		t.Fatal(err)
	}
	var w wasmhttpv3.Wasm
	if err := f.GetTypedConfig().UnmarshalTo(&w); err != nil {
		t.Fatal(err)
	}
	w.Config.Name, w.Config.RootId, w.Config.Configuration = name, name, nil
	w.Config.GetVmConfig().VmId = name
	if f.ConfigType.(*hcmv3.HttpFilter_TypedConfig).TypedConfig, err = anypb.New(&w); err != nil {
		t.Fatal(err)
	}
	return f
}

// routes is the test's route table: forced versions first (a surviving
// x-llmcanary-force pins), then model m1 split by the bucket header with
// stable first, then /v1/models, and a 404 marker for anything unrouted.
func routes() *routev3.RouteConfiguration {
	exact := func(name, v string) *routev3.HeaderMatcher {
		return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
			StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}}}}
	}
	version := func(v string) []*corev3.HeaderValueOption {
		return []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: wire.HeaderVersion, Value: v},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}}
	}
	toCluster := func(c string) *routev3.Route_Route {
		return &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: c}}}
	}
	prefix := &routev3.RouteMatch_Prefix{Prefix: "/"}
	var rs []*routev3.Route
	for _, v := range []string{stableVersion, canaryVersion} {
		rs = append(rs, &routev3.Route{
			Name:                 "force-" + v,
			Match:                &routev3.RouteMatch{PathSpecifier: prefix, Headers: []*routev3.HeaderMatcher{exact(wire.HeaderModel, model), exact(wire.HeaderForce, v)}},
			Action:               toCluster(v),
			ResponseHeadersToAdd: version(v),
		})
	}
	rs = append(rs, &routev3.Route{
		Name:  "model-" + model,
		Match: &routev3.RouteMatch{PathSpecifier: prefix, Headers: []*routev3.HeaderMatcher{exact(wire.HeaderModel, model)}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_WeightedClusters{
			WeightedClusters: &routev3.WeightedCluster{
				RandomValueSpecifier: &routev3.WeightedCluster_HeaderName{HeaderName: wire.HeaderBucket},
				Clusters: []*routev3.WeightedCluster_ClusterWeight{
					{Name: stableVersion, Weight: wrapperspb.UInt32(weights[0]), ResponseHeadersToAdd: version(stableVersion)},
					{Name: canaryVersion, Weight: wrapperspb.UInt32(weights[1]), ResponseHeadersToAdd: version(canaryVersion)},
				},
			}}}},
	}, &routev3.Route{
		Name:                 "models",
		Match:                &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/v1/models"}},
		Action:               toCluster(stableVersion),
		ResponseHeadersToAdd: version(stableVersion),
	}, &routev3.Route{
		Name:  "unrouted",
		Match: &routev3.RouteMatch{PathSpecifier: prefix},
		Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{
			Status: 404, Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "unrouted"}}}},
	})
	return &routev3.RouteConfiguration{Name: "llm", VirtualHosts: []*routev3.VirtualHost{{
		Name: "llm", Domains: []string{"*"}, Routes: rs,
	}}}
}

func listener(name string, port int, wasmFilter *hcmv3.HttpFilter, bufferLimit uint32) *listenerv3.Listener {
	router, _ := anypb.New(&routerv3.Router{})
	var filters []*hcmv3.HttpFilter
	if wasmFilter != nil {
		filters = append(filters, wasmFilter)
	}
	filters = append(filters, &hcmv3.HttpFilter{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}})
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix:     name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: routes()},
		HttpFilters:    filters,
	}
	hcmAny, _ := anypb.New(hcm)
	l := &listenerv3.Listener{
		Name:    name,
		Address: sockAddr("127.0.0.1", fmt.Sprint(port)),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcmAny},
		}}}},
	}
	if bufferLimit > 0 {
		// The filter buffers up to max_body_bytes; Envoy's own limit must
		// not be lower, or Envoy answers 413 itself without the JSON body.
		l.PerConnectionBufferLimitBytes = wrapperspb.UInt32(bufferLimit + 64<<10)
	}
	return l
}

// result is one response as the tests see it.
type result struct {
	status  int
	version string // x-llmcanary-version
	body    []byte
	echo    echoReply // when an upstream answered
}

var client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 10 * time.Second}

func do(t testing.TB, method, url string, headers map[string]string, body string) result {
	t.Helper()
	r, err := doErr(method, url, headers, body)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func doErr(method, url string, headers map[string]string, body string) (result, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return result{}, err
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return result{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return result{}, err
	}
	r := result{status: resp.StatusCode, version: resp.Header.Get(wire.HeaderVersion), body: b}
	if resp.Header.Get(wire.HeaderServedBy) != "" {
		if err := json.Unmarshal(b, &r.echo); err != nil {
			return result{}, fmt.Errorf("upstream reply: %w", err)
		}
	}
	return r, nil
}

func chatBody(model, user string) string {
	m := map[string]any{"model": model, "messages": []any{map[string]string{"role": "user", "content": "hi"}}}
	if user != "" {
		m["user"] = user
	}
	b, _ := json.Marshal(m)
	return string(b)
}

// doBody posts body to url, with a content-length or chunked.
func doBody(t testing.TB, url, body string, chunked bool) result {
	t.Helper()
	if !chunked {
		return do(t, "POST", url, nil, body)
	}
	req, err := http.NewRequest("POST", url, io.MultiReader(strings.NewReader(body)))
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = -1
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return result{status: resp.StatusCode, version: resp.Header.Get(wire.HeaderVersion), body: b}
}

// waitLog waits until Envoy's log contains s.
func waitLog(e *envoy, s string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(e.proc.LogPath); err == nil && strings.Contains(string(b), s) {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// Package-lifetime resources: the shared Envoy outlives the test that
// started it and is stopped by TestMain.
var (
	pkgMu       sync.Mutex
	pkgCleanups []func()
)

// packageTB is a testing.TB whose Cleanup and TempDir last for the whole
// test binary.
type packageTB struct{ *testing.T }

func (p packageTB) Cleanup(f func()) {
	pkgMu.Lock()
	defer pkgMu.Unlock()
	pkgCleanups = append(pkgCleanups, f)
}

func (p packageTB) TempDir() string {
	dir, err := os.MkdirTemp("", "llmcanary-envoytest-")
	if err != nil {
		p.Fatal(err)
	}
	p.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// Logf writes to stderr: a package-lifetime cleanup runs after the test
// that started it has finished, when its own log is closed.
func (p packageTB) Logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}

// Failed reports whether any test of the package failed, once TestMain
// runs the cleanups.
func (p packageTB) Failed() bool { return pkgFailed }

var pkgFailed bool

func TestMain(m *testing.M) {
	code := m.Run()
	pkgFailed = code != 0
	pkgMu.Lock()
	for i := len(pkgCleanups) - 1; i >= 0; i-- {
		pkgCleanups[i]()
	}
	pkgMu.Unlock()
	procs.RemoveBuiltWasmModule()
	os.Exit(code)
}
