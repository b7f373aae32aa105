// Package local assembles a whole llmcanary on one machine: the control
// plane and the telemetry service in process (xds.Start, extprocsvc.Start),
// ClickHouse and Envoy as real processes (package procs), simulated pools
// on loopback, and the links between Envoy and the services over mTLS with
// a CA of its own. `llmcanary up`, the demo, the benchmarks and the
// end-to-end tests use it; the analyzer is started by the caller (the demo
// in process with analyzersvc.Start, the tests as a process with
// procs.StartAnalyzer).
package local

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/extproc/extprocsvc"
	"github.com/llmcanary/llmcanary/internal/mtls"
	"github.com/llmcanary/llmcanary/internal/procs"
	"github.com/llmcanary/llmcanary/sim"
	"github.com/llmcanary/llmcanary/xds"
)

// SimServer is a simulated inference pool served on loopback.
type SimServer struct {
	Addr    string
	Profile sim.Profile
	srv     *http.Server
}

// StartSim serves a simulated pool with profile p on a free loopback port.
func StartSim(p sim.Profile) (*SimServer, error) {
	h, err := sim.New(p)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &SimServer{Addr: l.Addr().String(), Profile: p, srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}}
	go s.srv.Serve(l)
	return s, nil
}

// Stop closes the pool at once.
func (s *SimServer) Stop() { s.srv.Close() }

// Options describe a local llmcanary procs.
type Options struct {
	Dir   string // everything the stack writes: state, logs, configs
	Token string // management API token (default: a fixed dev token)
	// Envoys to start (default 1). The second and later bind their own
	// listener ports through node metadata; odd-numbered ones use delta xDS.
	Envoys int
	// Wasm adds the proxy-wasm filter.
	Wasm *xds.WasmOptions
	// ClickHouse starts a ClickHouse server; Telemetry also starts the
	// ext_proc service writing to it and adds the ext_proc filter.
	ClickHouse bool
	Telemetry  bool
	// ClickHouseShards, when 2 or more, starts that many servers as the
	// shards of the cluster ClusterName instead of one server, and the
	// telemetry shards its rows over them.
	ClickHouseShards int
	// ExtProcAddr points the gateway's ext_proc filter at a telemetry
	// service running elsewhere (a `llmcanary extproc` process) instead of
	// the in-process one; it needs ClickHouse and excludes Telemetry.
	ExtProcAddr string
	// Capture configures the telemetry's sampled text capture.
	Capture extproc.CaptureOptions
	// Measure says which requests the telemetry times (zero: by need).
	Measure xds.Measure
	Log     *slog.Logger
	// Plaintext runs the control plane, the telemetry and Envoy's links to
	// them without TLS. By default the stack issues a CA and certificates
	// in Dir/tls (mtls.Generate) and runs as production does: xDS and
	// ext_proc over mTLS, the management API over TLS with its token.
	Plaintext bool
}

// Local is a running local stack: the control plane (in process), Envoy
// gateways (real processes) and whatever pools the caller adds.
type Local struct {
	CP *xds.ControlPlane
	// ClickHouse is the stack's server; with ClickHouseShards, the first
	// shard, whose Distributed tables read the whole cluster.
	ClickHouse *procs.ClickHouse
	// Shards are the cluster's servers, in shard order; nil without
	// ClickHouseShards.
	Shards    []*procs.ClickHouse
	Telemetry *extprocsvc.Service
	Envoys    []*procs.Envoy
	Gateway   []string // listener address of each Envoy
	API       *xds.Client
	// Certs is the stack's certificate directory; empty when Plaintext.
	// A telemetry service started elsewhere (ExtProcAddr) serves
	// Certs.ServerFiles().
	Certs mtls.Dir

	opts   xds.Options
	closer []func()
}

// ClusterName names the ClickHouse cluster of a stack with ClickHouseShards.
const ClusterName = "telemetry"

// DevToken is the management API token of local stacks.
const DevToken = "llmcanary-dev-token"

// Start starts the stack o describes: certificates (unless Plaintext),
// ClickHouse and the telemetry service when asked for, the control plane,
// then the Envoys. Pools and models are added by the caller through the
// API; Stop ends everything.
func Start(ctx context.Context, o Options) (*Local, error) {
	if o.Envoys == 0 {
		o.Envoys = 1
	}
	if o.Token == "" {
		o.Token = DevToken
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, err
	}
	ports, err := procs.FreePorts(2 + o.Envoys)
	if err != nil {
		return nil, err
	}
	cpo := xds.DefaultOptions()
	cpo.XDSListen = "127.0.0.1:" + strconv.Itoa(ports[0])
	cpo.APIListen = "127.0.0.1:" + strconv.Itoa(ports[1])
	cpo.DataDir = filepath.Join(o.Dir, "control")
	cpo.Token = o.Token
	cpo.ListenerAddress = "127.0.0.1"
	cpo.ListenerPort = uint32(ports[2])
	cpo.Wasm = o.Wasm
	cpo.Logger = o.Log
	l := &Local{opts: cpo}
	if !o.Plaintext {
		if l.Certs, err = mtls.Generate(mtls.GenerateOptions{Dir: filepath.Join(o.Dir, "tls")}); err != nil {
			return nil, err
		}
		cpo.TLS = l.Certs.ServerFiles()
		l.opts = cpo
	}
	if (o.ClickHouse || o.Telemetry) && o.ClickHouseShards >= 2 {
		dirs := make([]string, o.ClickHouseShards)
		for i := range dirs {
			dirs[i] = filepath.Join(o.Dir, fmt.Sprintf("clickhouse-shard-%d", i+1))
		}
		if l.Shards, err = procs.StartClickHouseCluster(ctx, ClusterName, dirs); err != nil {
			return nil, err
		}
		for _, ch := range l.Shards {
			l.OnStop(func() { ch.Stop() })
		}
		l.ClickHouse = l.Shards[0]
	} else if o.ClickHouse || o.Telemetry {
		ch, err := procs.StartClickHouse(ctx, procs.ClickHouseOptions{Dir: filepath.Join(o.Dir, "clickhouse")})
		if err != nil {
			return nil, err
		}
		l.ClickHouse = ch
		l.OnStop(func() { ch.Stop() })
	}
	if o.Telemetry {
		t, err := l.startTelemetry(o)
		if err != nil {
			l.Stop()
			return nil, err
		}
		l.Telemetry = t
		l.OnStop(t.Stop)
		cpo.ExtProc = &xds.ExtProcOptions{Address: t.Addr, CaptureRequestBody: o.Capture.Rate > 0, TLSDir: string(l.Certs), Measure: o.Measure}
		l.opts = cpo
	} else if o.ExtProcAddr != "" {
		cpo.ExtProc = &xds.ExtProcOptions{Address: o.ExtProcAddr, CaptureRequestBody: o.Capture.Rate > 0, TLSDir: string(l.Certs), Measure: o.Measure}
		l.opts = cpo
	}
	if err := l.StartControlPlane(ctx); err != nil {
		l.Stop()
		return nil, err
	}
	l.API = &xds.Client{BaseURL: l.CP.APIURL, Token: o.Token, Actor: "local"}
	if l.Certs != "" {
		if l.API.HTTP, err = mtls.HTTPClient(l.Certs.CA()); err != nil {
			l.Stop()
			return nil, err
		}
	}
	for i := 0; i < o.Envoys; i++ {
		eo := procs.EnvoyOptions{Dir: filepath.Join(o.Dir, "envoy"), NodeID: "gw-" + strconv.Itoa(i), XDS: cpo.XDSListen, Delta: i%2 == 1, TLSDir: string(l.Certs)}
		if i > 0 {
			eo.ListenerPort = ports[2+i]
		}
		e, err := procs.StartEnvoy(ctx, eo)
		if err != nil {
			l.Stop()
			return nil, err
		}
		l.Envoys = append(l.Envoys, e)
		l.Gateway = append(l.Gateway, "127.0.0.1:"+strconv.Itoa(ports[2+i]))
	}
	return l, nil
}

// StartControlPlane (re)starts the in-process control plane on the same
// ports and data directory.
func (l *Local) StartControlPlane(ctx context.Context) error {
	var err error
	// The old listeners may linger for a moment, and the freed ports are
	// in the ephemeral range: a short-lived outgoing connection of a busy
	// machine can hold one for a while. Up to 10 s.
	for i := 0; i < 100; i++ {
		l.CP, err = xds.Start(context.Background(), l.opts)
		if err == nil {
			return nil
		}
		var opErr *net.OpError
		if !errors.As(err, &opErr) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("restart control plane: %w", err)
}

// StopControlPlane stops the control plane, as a crash or a deploy would.
func (l *Local) StopControlPlane() { l.CP.Stop() }

// WaitReady waits until every Envoy serves the current revision.
func (l *Local) WaitReady(ctx context.Context) error {
	st := l.CP.Store.State()
	hosts := map[string][]string{}
	for _, m := range st.Models {
		for _, v := range m.Versions {
			hosts[xds.ClusterName(m.Name, v.Name)] = v.Endpoints
		}
	}
	for i, e := range l.Envoys {
		if err := e.WaitReady(ctx, l.Gateway[i], st.Revision, hosts); err != nil {
			return err
		}
	}
	return nil
}

// OnStop registers f to run when the stack stops (pools, services).
func (l *Local) OnStop(f func()) { l.closer = append(l.closer, f) }

// Stop stops everything, Envoys first.
func (l *Local) Stop() {
	for _, e := range l.Envoys {
		e.Stop()
	}
	if l.CP != nil {
		l.CP.Stop()
		l.CP = nil
	}
	for i := len(l.closer) - 1; i >= 0; i-- {
		l.closer[i]()
	}
}
