//go:build integration

package bench

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/internal/local"
	"github.com/llmcanary/llmcanary/internal/noopwasm"
	"github.com/llmcanary/llmcanary/internal/procs"
	"github.com/llmcanary/llmcanary/xds"
)

// The gateway cost benchmark's shape. Request counts are multiplied by
// $LLMCANARY_BENCH_SCALE (default 1; e.g. 0.2 for a quick check).
const (
	costRounds   = 3
	costInFlight = 8    // concurrent requests of the throughput phase
	costUsers    = 4000 // distinct x-user-id values, drawn in turn
	costTokens   = 16   // tokens of every answer, streamed or not
	hashKey      = "bench-hash-key-0123456789"
)

// costBody is a request body and its phase sizes at scale 1.
type costBody struct {
	name     string
	body     string
	perRound int // requests of the throughput phase (CPU is measured over it)
	latencyN int // requests of the latency phase, one at a time
}

var costBodies = []costBody{
	{"non-streamed", `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}]}`, 6000, 800},
	{"streamed, 16 tokens", `{"model":"` + model + `","stream":true,"messages":[{"role":"user","content":"hi"}]}`, 3000, 500},
}

// gatewayConfig is one way to put Envoy in front of the pool.
type gatewayConfig struct {
	key  string // short name, for metrics and directories
	name string // row label
	// module returns the proxy-wasm module Envoy runs; nil: none.
	module func(b *testing.B, dir string) string
	// telemetry adds the ext_proc filter and its access log, served by a
	// `llmcanary extproc` process writing to ClickHouse.
	telemetry bool
	measure   xds.Measure
	canary    float64 // the canary's weight in %, 0: no rollout
}

// The processes whose CPU is reported, in the table's order.
const (
	cpuEnvoy = iota
	cpuExtproc
	cpuClickHouse
	cpuPool
	cpuLoadgen
	nCPU
)

var cpuNames = [nCPU]string{"Envoy", "extproc", "ClickHouse", "pool", "loadgen"}

// costFixture holds what the configurations share: the pool (one `llmcanary
// sim` process per version) and one ClickHouse server.
type costFixture struct {
	b     *testing.B
	dir   string
	bin   string
	pools map[string]*procs.Proc // version → process
	addrs map[string]string      // version → address
	ch    *procs.ClickHouse
}

// gateway is one running configuration: its own control plane (in this
// process), Envoy and, with telemetry, `llmcanary extproc`.
type gateway struct {
	gatewayConfig
	f     *costFixture
	l     *local.Local
	ep    *procs.Extproc
	addr  string
	users atomic.Uint64
}

// phaseTimes is how long the benchmark's parts took, for its title.
type phaseTimes struct{ startup, rounds, ready time.Duration }

// costRun is what one round measured on one gateway with one body.
type costRun struct {
	rps      float64
	p50, p99 time.Duration
	cpu      [nCPU]float64 // µs per request; NaN: the process is not in this configuration
	timed    float64       // share of requests the telemetry timed; NaN without it
	canary   float64       // share of requests the canary served
	errors   int
}

func benchScale(b *testing.B) float64 {
	v := os.Getenv("LLMCANARY_BENCH_SCALE")
	if v == "" {
		return 1
	}
	s, err := strconv.ParseFloat(v, 64)
	if err != nil || !(s > 0 && s <= 10) {
		b.Fatalf("LLMCANARY_BENCH_SCALE=%q: want a number in (0, 10]", v)
	}
	return s
}

func scaled(n int, s float64) int { return max(int(float64(n)*s), 50) }

// BenchmarkGatewayCost measures what each part of the gateway costs, each
// configuration a real Envoy with one worker thread (--concurrency 1) in
// front of the zero-latency simulated pool:
//
//  1. Envoy alone with llmcanary's routes, no filters: the baseline;
//  2. Envoy + a proxy-wasm module that does nothing (internal/noopwasm),
//     and 2g, the same in Go (wasm/cmd/noop: the Go runtime and binding);
//  3. Envoy + the llmcanary wasm filter;
//  4. all filters, no rollout running (default Measure: 1 % of users timed);
//  5. all filters, a rollout at 10 % (weights 90/10, default Measure);
//  6. all filters, every request timed (Measure{All: true}).
//
// The pool (`llmcanary sim`), the telemetry service (`llmcanary extproc`,
// Envoy ↔ service over mTLS as in production) and ClickHouse run in
// processes of their own, so each process's CPU per request shows. The
// configurations are measured in interleaved rounds (the order rotating),
// non-streamed and streamed: throughput at 8 concurrent requests, CPU per
// request per process over that phase, p50/p99 one request at a time.
// Then Envoy's time to its first served request, with and without the
// filter.
//
//	go test -tags integration -run '^$' -bench GatewayCost -benchtime 1x ./test/bench/
//
// $LLMCANARY_BENCH_SCALE multiplies the request counts (0.2 for a quick
// check).
func BenchmarkGatewayCost(b *testing.B) {
	scale := benchScale(b)
	ctx := context.Background()
	var took phaseTimes
	t0 := time.Now()
	f := startCostFixture(b)
	filter := func(b *testing.B, _ string) string { return wasmModule(b) }
	minimalNoop := func(b *testing.B, dir string) string {
		p, err := noopwasm.Write(dir)
		if err != nil {
			b.Fatal(err)
		}
		return p
	}
	goNoop := func(b *testing.B, _ string) string {
		p, err := procs.GoNoopModule()
		if err != nil {
			b.Fatal(err)
		}
		return p
	}
	configs := []gatewayConfig{
		{key: "alone", name: "1  Envoy alone (no filters)"},
		{key: "noop", name: "2  + no-op wasm module", module: minimalNoop},
		{key: "gonoop", name: "2g + Go no-op wasm module", module: goNoop},
		{key: "filter", name: "3  + llmcanary wasm filter", module: filter},
		{key: "idle", name: "4  all filters, no rollout", module: filter, telemetry: true},
		{key: "rollout", name: "5  all filters, rollout 10 %", module: filter, telemetry: true, canary: 10},
		{key: "all", name: "6  all filters, all timed", module: filter, telemetry: true, measure: xds.Measure{All: true}},
	}
	gws := make([]*gateway, len(configs))
	for i, c := range configs {
		gws[i] = f.startGateway(ctx, c)
	}

	took.startup = time.Since(t0)
	t0 = time.Now()
	for _, body := range costBodies { // warm connections, VMs and the telemetry path
		for _, g := range gws {
			g.warm(body)
		}
	}
	runs := make([][][]costRun, len(gws)) // gateway, body, round
	for i := range runs {
		runs[i] = make([][]costRun, len(costBodies))
	}
	for r := 0; r < costRounds; r++ {
		for bi, body := range costBodies {
			for i := range gws {
				gi := (i + r) % len(gws)
				runs[gi][bi] = append(runs[gi][bi], gws[gi].measure(body, scaled(body.perRound, scale), scaled(body.latencyN, scale)))
			}
		}
	}
	took.rounds = time.Since(t0)
	t0 = time.Now()
	ready := timeToReady(b, gws[0], gws[1], gws[3])
	took.ready = time.Since(t0)

	printCostReport(b, gws, runs, ready, scale, took)
	for range b.N {
	}
}

func startCostFixture(b *testing.B) *costFixture {
	b.Helper()
	bin, err := procs.LlmcanaryBinary()
	if err != nil {
		b.Fatalf("the benchmark runs the real llmcanary binary: %v", err)
	}
	f := &costFixture{b: b, dir: b.TempDir(), bin: bin, pools: map[string]*procs.Proc{}, addrs: map[string]string{}}
	for _, v := range []string{"v1", "v2"} {
		f.startPool(v)
	}
	f.ch, err = procs.StartClickHouse(context.Background(), procs.ClickHouseOptions{Dir: filepath.Join(f.dir, "clickhouse")})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.ch.Stop() })
	return f
}

// startPool runs `llmcanary sim` for version v: no time to first token,
// none between tokens, costTokens tokens per answer.
func (f *costFixture) startPool(v string) {
	b := f.b
	port, err := procs.FreePort()
	if err != nil {
		b.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	p, err := procs.StartProc("sim "+v, filepath.Join(f.dir, "sim-"+v+".log"), f.bin, "sim", "--listen", addr,
		"--version", v, "--model", model, "--tokens", strconv.Itoa(costTokens), "--ttft-ms", "0", "--itl-ms", "0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Stop(5 * time.Second) })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := procs.WaitTCP(ctx, addr); err != nil {
		b.Fatalf("pool %s: %v\n%s", v, err, p.Tail(20))
	}
	f.pools[v], f.addrs[v] = p, addr
}

func (f *costFixture) startGateway(ctx context.Context, c gatewayConfig) *gateway {
	b := f.b
	dir := filepath.Join(f.dir, c.key)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	o := local.Options{Dir: dir, Envoys: 1, Measure: c.measure}
	if c.module != nil {
		o.Wasm = &xds.WasmOptions{Path: c.module(b, dir), HashKey: hashKey}
	}
	var epAddr string
	if c.telemetry {
		port, err := procs.FreePort()
		if err != nil {
			b.Fatal(err)
		}
		epAddr = "127.0.0.1:" + strconv.Itoa(port)
		o.ExtProcAddr = epAddr
	}
	l, err := local.Start(ctx, o)
	if err != nil {
		b.Fatalf("%s: %v", c.name, err)
	}
	b.Cleanup(l.Stop)
	g := &gateway{gatewayConfig: c, f: f, l: l, addr: l.Gateway[0]}
	if c.telemetry {
		// The log level is the service's default; the stack's helper asks
		// for debug, which a benchmark must not pay for.
		g.ep, err = procs.StartExtproc(ctx, procs.ExtprocOptions{
			Dir: filepath.Join(dir, "extproc"), Listen: epAddr, ClickHouse: f.ch.Addr,
			TLS: l.Certs.ServerFiles(), Args: []string{"--log-level", "info"},
		})
		if err != nil {
			b.Fatalf("%s: %v", c.name, err)
		}
		b.Cleanup(func() { g.ep.Proc.Stop(10 * time.Second) })
	}
	_, err = l.API.PutModel(ctx, &xds.Model{
		Name: model, Stable: "v1",
		Versions: []xds.Version{{Name: "v1", Endpoints: []string{f.addrs["v1"]}}, {Name: "v2", Endpoints: []string{f.addrs["v2"]}}},
		Weights:  map[string]float64{"v1": 100},
	})
	if err != nil {
		b.Fatal(err)
	}
	if c.canary > 0 {
		if _, err := l.API.SetWeights(ctx, model, map[string]float64{"v1": 100 - c.canary, "v2": c.canary}, ""); err != nil {
			b.Fatal(err)
		}
	}
	if err := l.WaitReady(ctx); err != nil {
		b.Fatalf("%s: %v", c.name, err)
	}
	return g
}

// send sends n requests, conc at a time, each from the next of costUsers
// users.
func (g *gateway) send(body costBody, n, conc int) load {
	return sendLoad(g.addr, body.body, n, conc, func() string {
		return "u" + strconv.FormatUint(g.users.Add(1)%costUsers, 10)
	})
}

// warm sends a few hundred requests and waits for the telemetry to settle.
func (g *gateway) warm(body costBody) {
	before := g.telemetry()
	l := g.send(body, 200, costInFlight)
	g.checkLoad(l)
	g.drain(before, l.n)
}

func (g *gateway) checkLoad(l load) {
	if l.errors > 0 {
		g.f.b.Errorf("%s: %d of %d requests failed, first: %v", g.name, l.errors, l.n, l.firstErr)
	}
}

// measure runs one round on g: the throughput phase with every process's
// CPU, then the latency phase. Each phase ends when the telemetry has
// written every row it caused, so none of its work lands in the next.
func (g *gateway) measure(body costBody, n, latencyN int) costRun {
	b := g.f.b
	before := g.telemetry()
	cpu0 := g.cpu(true)
	l := g.send(body, n, costInFlight)
	loadgen := g.cpu(false)[cpuLoadgen]
	after := g.drain(before, n)
	cpu1 := g.cpu(true)
	cpu1[cpuLoadgen] = loadgen
	g.checkLoad(l)

	run := costRun{rps: float64(n) / l.elapsed.Seconds(), errors: l.errors, canary: float64(l.canary) / float64(n)}
	for i := range run.cpu {
		run.cpu[i] = float64(cpu1[i]-cpu0[i]) / float64(time.Microsecond) / float64(n)
		if cpu0[i] < 0 {
			run.cpu[i] = nan
		}
	}
	run.timed = nan
	if g.ep != nil {
		run.timed = (after[metricRequests] - before[metricRequests]) / float64(n)
	}

	before = g.telemetry()
	lat := g.send(body, latencyN, 1)
	g.checkLoad(lat)
	g.drain(before, latencyN)
	run.errors += lat.errors
	run.p50, run.p99 = percentile(lat.lat, 0.5), percentile(lat.lat, 0.99)
	if b.Failed() {
		b.FailNow()
	}
	return run
}

// cpu reads the CPU time each process of g has used so far; -1 for a
// process the configuration does not have. Envoy's, the service's and the
// pool's threads live as long as their process, so their schedstat sums
// (ns) are their CPU; ClickHouse's threads come and go, so it is read from
// /proc/<pid>/stat (10 ms ticks, exited threads included). The load
// generator is this process (getrusage), its control planes included.
// others=false reads only the load generator.
func (g *gateway) cpu(others bool) [nCPU]time.Duration {
	b := g.f.b
	var c [nCPU]time.Duration
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	c[cpuLoadgen] = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	if !others {
		return c
	}
	must := func(d time.Duration, err error) time.Duration {
		if err != nil {
			b.Fatal(err)
		}
		return d
	}
	c[cpuEnvoy] = must(procs.ThreadsCPU(g.l.Envoys[0].Proc.Pid()))
	c[cpuExtproc], c[cpuClickHouse] = -1, -1
	if g.ep != nil {
		c[cpuExtproc] = must(procs.ThreadsCPU(g.ep.Proc.Pid()))
		c[cpuClickHouse] = must(procs.ProcCPU(g.f.ch.Pid()))
	}
	for _, p := range g.f.pools {
		c[cpuPool] += must(procs.ThreadsCPU(p.Pid()))
	}
	return c
}

// The telemetry service's metrics the benchmark reads.
const (
	metricRequests    = "llmcanary_extproc_requests_total"
	metricStreamsOpen = "llmcanary_extproc_streams_open"
)

// rowsDone is how many rows of a kind the service's ClickHouse writer has
// finished with: inserted, replayed from its spool or dropped.
func rowsDone(m map[string]float64, kind string) float64 {
	return m[kind+"_written_total"] + m[kind+"_replayed_total"] + m[kind+"_dropped_total"]
}

// telemetry reads the service's metrics; nil without telemetry.
func (g *gateway) telemetry() map[string]float64 {
	if g.ep == nil {
		return nil
	}
	m, err := g.ep.Metrics(context.Background())
	if err != nil {
		g.f.b.Fatalf("%s: %v", g.name, err)
	}
	return m
}

// drain waits until the telemetry has finished with the n requests sent
// since before: no ext_proc stream open, a request-log row written for
// each (Envoy's access log arrives in batches), and a telemetry row for
// each request the service timed. It returns the metrics then.
func (g *gateway) drain(before map[string]float64, n int) map[string]float64 {
	if g.ep == nil {
		return nil
	}
	deadline := time.Now().Add(60 * time.Second)
	// Each look gathers every metric of the service, process statistics
	// included (about 0.2 ms of its CPU), and the rows arrive in batches
	// (Envoy's access log every 100 ms, inserts of up to a second's rows),
	// so a look every 100 ms costs the service little and waits little.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		m := g.telemetry()
		logged := rowsDone(m, "llmcanary_request_log") - rowsDone(before, "llmcanary_request_log")
		timed := m[metricRequests] - before[metricRequests]
		written := rowsDone(m, "llmcanary_telemetry") - rowsDone(before, "llmcanary_telemetry")
		if m[metricStreamsOpen] == 0 && logged >= float64(n) && written >= timed {
			if d := m["llmcanary_request_log_dropped_total"] + m["llmcanary_telemetry_dropped_total"] -
				before["llmcanary_request_log_dropped_total"] - before["llmcanary_telemetry_dropped_total"]; d > 0 {
				g.f.b.Errorf("%s: the telemetry dropped %v rows", g.name, d)
			}
			return m
		}
		if time.Now().After(deadline) {
			g.f.b.Fatalf("%s: telemetry not settled after 60 s: %v streams open, %v of %d request-log rows, %v of %v telemetry rows",
				g.name, m[metricStreamsOpen], logged, n, written, timed)
		}
		<-tick.C
	}
}

// readiness is Envoy's start-up with one configuration's listener.
type readiness struct {
	name      string
	wall, cpu []float64 // seconds, one per round
}

// timeToReady restarts each gateway's Envoy in turn, costRounds times, and
// measures the time from its start to its first answered request and the
// CPU it used until then. Envoy compiles a wasm module before its listener
// serves, so a large module delays every start.
func timeToReady(b *testing.B, gws ...*gateway) []readiness {
	out := make([]readiness, len(gws))
	for i, g := range gws {
		out[i].name = g.name
	}
	for r := 0; r < costRounds; r++ {
		for i := range gws {
			gi := (i + r) % len(gws)
			w, c := gws[gi].restart(b)
			out[gi].wall = append(out[gi].wall, w.Seconds())
			out[gi].cpu = append(out[gi].cpu, c.Seconds())
		}
	}
	return out
}

func (g *gateway) restart(b *testing.B) (wall, cpu time.Duration) {
	e := g.l.Envoys[0]
	e.Stop()
	start := time.Now()
	if err := e.Restart(context.Background()); err != nil {
		b.Fatalf("%s: %v", g.name, err)
	}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		_, err := post(g.addr, costBodies[0].body, "u0")
		if err == nil {
			break
		}
		if e.Proc.Exited() || time.Since(start) > 3*time.Minute {
			b.Fatalf("%s: Envoy not serving %v after its start: %v\n%s", g.name, time.Since(start), err, e.Proc.Tail(20))
		}
		<-tick.C
	}
	wall = time.Since(start)
	cpu, err := procs.ProcCPU(e.Proc.Pid())
	if err != nil {
		b.Fatal(err)
	}
	return wall, cpu
}

// envoyVersion returns the version Envoy reports, for the table's title.
func envoyVersion() string {
	bin, err := procs.EnvoyBinary()
	if err != nil {
		return "?"
	}
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "?"
	}
	// "…/envoy  version: <sha>/1.37.0/Clean/RELEASE/BoringSSL"
	_, v, ok := strings.Cut(string(out), "version: ")
	f := strings.Split(strings.TrimSpace(v), "/")
	if !ok || len(f) < 2 {
		return "?"
	}
	return f[1]
}
