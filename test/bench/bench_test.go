//go:build integration

// Package bench measures llmcanary's cost on the request path and how fast
// its decisions reach Envoy, against baselines measured in the same run:
//
//	make bench   (go test -run '^$' -bench . -benchtime 1x ./test/bench/)
//
// Every figure is printed as a table; ratios compare like with like on the
// same machine at the same moment, so they travel better than raw numbers.
package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/internal/local"
	"github.com/llmcanary/llmcanary/internal/procs"
	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/sim"
	"github.com/llmcanary/llmcanary/xds"
)

const model = "bench-model"

// target is one way to reach the zero-latency pool.
type target struct {
	name    string
	addr    string
	headers map[string]string
}

type result struct {
	lat     []time.Duration
	elapsed time.Duration
	n       int
	errors  int
}

func (r result) pct(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), r.lat...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p * float64(len(s)-1))
	return s[i]
}

func (r result) rps() float64 { return float64(r.n) / r.elapsed.Seconds() }

var client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, MaxConnsPerHost: 64}}

// run sends n requests with conc workers and times each.
func run(t target, body string, n, conc int) result {
	var mu sync.Mutex
	var res result
	next := make(chan struct{})
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				req, _ := http.NewRequest("POST", "http://"+t.addr+"/v1/chat/completions", strings.NewReader(body))
				req.Header.Set("content-type", "application/json")
				for k, v := range t.headers {
					req.Header.Set(k, v)
				}
				s := time.Now()
				resp, err := client.Do(req)
				ok := err == nil
				if ok {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					ok = err == nil && resp.StatusCode == 200
				}
				d := time.Since(s)
				mu.Lock()
				res.lat = append(res.lat, d)
				if !ok {
					res.errors++
				}
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- struct{}{}
	}
	close(next)
	wg.Wait()
	res.elapsed, res.n = time.Since(start), n
	return res
}

// interleave measures every target in alternating rounds so that a noisy
// moment on the machine hits all of them alike.
func interleave(targets []target, body string, rounds, perRound, conc int) []result {
	out := make([]result, len(targets))
	for r := 0; r < rounds; r++ {
		for i, t := range targets {
			x := run(t, body, perRound, conc)
			out[i].lat = append(out[i].lat, x.lat...)
			out[i].elapsed += x.elapsed
			out[i].n += x.n
			out[i].errors += x.errors
		}
	}
	return out
}

func report(b *testing.B, title string, targets []target, res []result) {
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n%s\n%-34s %9s %9s %10s %8s %8s %8s %6s\n", title, "path", "p50", "p99", "req/s", "p50 ×", "p99 ×", "rps ×", "errors")
	base := res[0]
	for i, t := range targets {
		r := res[i]
		fmt.Fprintf(&sb, "%-34s %9s %9s %10.0f %8.2f %8.2f %8.2f %6d\n", t.name,
			r.pct(0.5).Round(time.Microsecond), r.pct(0.99).Round(time.Microsecond), r.rps(),
			float64(r.pct(0.5))/float64(base.pct(0.5)), float64(r.pct(0.99))/float64(base.pct(0.99)), r.rps()/base.rps(), r.errors)
		if i > 0 {
			b.ReportMetric(float64(r.pct(0.5))/float64(base.pct(0.5)), strings.ReplaceAll(t.name, " ", "_")+"_p50_ratio")
		}
	}
	fmt.Print(sb.String())
}

func startStack(b *testing.B, o local.Options, stable sim.Profile) (*local.Local, *local.SimServer) {
	b.Helper()
	o.Dir = b.TempDir()
	o.Envoys = 1
	l, err := local.Start(context.Background(), o)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(l.Stop)
	s, err := local.StartSim(stable)
	if err != nil {
		b.Fatal(err)
	}
	l.OnStop(s.Stop)
	canary, err := local.StartSim(sim.Profile{Version: "v2", Model: model})
	if err != nil {
		b.Fatal(err)
	}
	l.OnStop(canary.Stop)
	_, err = l.API.PutModel(context.Background(), &xds.Model{
		Name: model, Stable: "v1",
		Versions: []xds.Version{{Name: "v1", Endpoints: []string{s.Addr}}, {Name: "v2", Endpoints: []string{canary.Addr}}},
		Weights:  map[string]float64{"v1": 100},
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := l.WaitReady(context.Background()); err != nil {
		b.Fatal(err)
	}
	return l, s
}

func wasmModule(b *testing.B) string {
	p, err := procs.WasmModule()
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkGatewayOverhead: the zero-latency pool called directly, through
// Envoy with llmcanary's routes, with the wasm filter, and with wasm plus
// ext_proc writing to ClickHouse.
func BenchmarkGatewayOverhead(b *testing.B) {
	zero := sim.Profile{Version: "v1", Model: model, OutputTokens: sim.FixedCount(16)}
	plain, direct := startStack(b, local.Options{}, zero)
	withWasm, _ := startStack(b, local.Options{Wasm: &xds.WasmOptions{Path: wasmModule(b), HashKey: "bench-hash-key-0123456789"}}, zero)
	full, _ := startStack(b, local.Options{Telemetry: true, Wasm: &xds.WasmOptions{Path: wasmModule(b), HashKey: "bench-hash-key-0123456789"}}, zero)
	user := map[string]string{wire.HeaderUserID: "bench-user"}
	targets := []target{
		{"pool directly (baseline)", direct.Addr, nil},
		{"Envoy, llmcanary routes", plain.Gateway[0], map[string]string{wire.HeaderModel: model}},
		{"Envoy + wasm filter", withWasm.Gateway[0], user},
		{"Envoy + wasm + ext_proc→ClickHouse", full.Gateway[0], user},
	}
	for _, body := range []struct{ name, body string }{
		{"non-streamed", `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}]}`},
		{"streamed, 16 tokens", `{"model":"` + model + `","stream":true,"messages":[{"role":"user","content":"hi"}]}`},
	} {
		for _, t := range targets { // warm up connections and the VM
			run(t, body.body, 200, 4)
		}
		lat := interleave(targets, body.body, 5, 400, 1)
		report(b, "latency, one request at a time, "+body.name+" (2000 requests per path)", targets, lat)
		thr := interleave(targets, body.body, 5, 1000, 8)
		report(b, "throughput, 8 concurrent, "+body.name+" (5000 requests per path)", targets, thr)
	}
	for i := 0; i < b.N; i++ {
	}
}

// BenchmarkXDSPropagation: from the management API call to Envoy serving the
// new weights, over 50 changes. A probe bucket flips between versions on
// every change; the time is taken when the first request lands on the new
// version.
func BenchmarkXDSPropagation(b *testing.B) {
	l, _ := startStack(b, local.Options{}, sim.Profile{Version: "v1", Model: model})
	ctx := context.Background()
	probe := strconv.FormatUint(7000, 10) // stable at 90/10, canary at 50/50
	var lat []time.Duration
	for i := 0; i < 50; i++ {
		w, want := map[string]float64{"v1": 50, "v2": 50}, "v2"
		if i%2 == 1 {
			w, want = map[string]float64{"v1": 90, "v2": 10}, "v1"
		}
		start := time.Now()
		if _, err := l.API.SetWeights(ctx, model, w, ""); err != nil {
			b.Fatal(err)
		}
		for {
			req, _ := http.NewRequest("POST", "http://"+l.Gateway[0]+"/v1/chat/completions",
				strings.NewReader(`{"model":"`+model+`","messages":[{"role":"user","content":"hi"}],"max_tokens":1}`))
			req.Header.Set(wire.HeaderModel, model)
			req.Header.Set(wire.HeaderBucket, probe)
			resp, err := client.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.Header.Get(wire.HeaderVersion) == want {
				break
			}
			if time.Since(start) > 10*time.Second {
				b.Fatalf("change %d not served after 10 s", i)
			}
		}
		lat = append(lat, time.Since(start))
	}
	r := result{lat: lat}
	fmt.Printf("\nxDS propagation, API call → Envoy serving the new weights, 50 changes\n  p50 %v   p99 %v   max %v\n",
		r.pct(0.5).Round(100*time.Microsecond), r.pct(0.99).Round(100*time.Microsecond), r.pct(1).Round(100*time.Microsecond))
	b.ReportMetric(float64(r.pct(0.99).Microseconds())/1000, "p99_ms")
	b.ReportMetric(float64(r.pct(0.5).Microseconds())/1000, "p50_ms")
	for i := 0; i < b.N; i++ {
	}
}

// BenchmarkWasmFilterMemory: Envoy's resident memory while 100k requests go
// through the wasm filter, sampled every 20k: it must level off, not grow
// with the number of requests.
func BenchmarkWasmFilterMemory(b *testing.B) {
	l, _ := startStack(b, local.Options{Wasm: &xds.WasmOptions{Path: wasmModule(b), HashKey: "bench-hash-key-0123456789"}},
		sim.Profile{Version: "v1", Model: model, OutputTokens: sim.FixedCount(2)})
	pid := l.Envoys[0].Proc.Pid()
	body := `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}],"user":"u"}`
	fmt.Printf("\nEnvoy resident memory with the wasm filter\n%10s %10s\n", "requests", "RSS MiB")
	fmt.Printf("%10d %10.1f\n", 0, rssMiB(pid))
	for done := 0; done < 100000; done += 20000 {
		res := run(target{addr: l.Gateway[0], headers: map[string]string{wire.HeaderUserID: "u" + strconv.Itoa(done)}}, body, 20000, 8)
		if res.errors > 0 {
			b.Fatalf("%d errors", res.errors)
		}
		fmt.Printf("%10d %10.1f\n", done+20000, rssMiB(pid))
	}
	for i := 0; i < b.N; i++ {
	}
}

func rssMiB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return -1
}
