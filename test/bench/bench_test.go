//go:build integration

// Package bench measures llmcanary's cost on the request path and how fast
// its decisions reach Envoy, against baselines measured in the same run:
//
//	make bench   (go test -tags integration -run '^$' -bench . -benchtime 1x ./test/bench/)
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
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/internal/local"
	"github.com/llmcanary/llmcanary/internal/procs"
	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/sim"
	"github.com/llmcanary/llmcanary/xds"
)

const model = "bench-model"

var client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, MaxConnsPerHost: 64}}

// load is what the load generator saw of one phase.
type load struct {
	n, errors int
	canary    int // answers served by v2
	elapsed   time.Duration
	lat       []time.Duration // each request's, from sending to the answer's end
	firstErr  error
}

// sendLoad sends n chat requests with body to addr, conc at a time, each
// from the user user returns, and times each.
func sendLoad(addr, body string, n, conc int, user func() string) load {
	var next atomic.Int64
	lats := make([][]time.Duration, conc)
	var mu sync.Mutex
	var out load
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var errors, canary int
			var firstErr error
			for next.Add(1) <= int64(n) {
				u := user()
				s := time.Now()
				version, err := post(addr, body, u)
				lats[w] = append(lats[w], time.Since(s))
				if err != nil {
					errors++
					if firstErr == nil {
						firstErr = err
					}
				}
				if version == "v2" {
					canary++
				}
			}
			mu.Lock()
			out.errors += errors
			out.canary += canary
			if out.firstErr == nil {
				out.firstErr = firstErr
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	out.elapsed, out.n = time.Since(start), n
	for _, l := range lats {
		out.lat = append(out.lat, l...)
	}
	return out
}

// post sends one chat request from user, with the model header the wasm
// filter would set (the filter replaces it; without the filter the route
// needs it), reads the whole answer and returns the version that served
// it.
func post(addr, body, user string) (string, error) {
	req, err := http.NewRequest("POST", "http://"+addr+"/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("content-type", "application/json")
	req.Header.Set(wire.HeaderUserID, user)
	req.Header.Set(wire.HeaderModel, model)
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %d", resp.StatusCode)
	}
	return resp.Header.Get(wire.HeaderVersion), err
}

// percentile returns the p-quantile (0 ≤ p ≤ 1) of lat, 0 when empty.
func percentile(lat []time.Duration, p float64) time.Duration {
	if len(lat) == 0 {
		return 0
	}
	s := slices.Clone(lat)
	slices.Sort(s)
	return s[int(p*float64(len(s)-1))]
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
	p50, p99, top := percentile(lat, 0.5), percentile(lat, 0.99), percentile(lat, 1)
	fmt.Printf("\nxDS propagation, API call → Envoy serving the new weights, 50 changes\n  p50 %v   p99 %v   max %v\n",
		p50.Round(100*time.Microsecond), p99.Round(100*time.Microsecond), top.Round(100*time.Microsecond))
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99_ms")
	b.ReportMetric(float64(p50.Microseconds())/1000, "p50_ms")
	for i := 0; i < b.N; i++ {
	}
}

// BenchmarkWasmFilterMemory: Envoy's resident memory while 100k requests go
// through the wasm filter, sampled every 20k: it must level off, not grow
// with the number of requests.
func BenchmarkWasmFilterMemory(b *testing.B) {
	l, _ := startStack(b, local.Options{Wasm: &xds.WasmOptions{Path: wasmModule(b), HashKey: hashKey}},
		sim.Profile{Version: "v1", Model: model, OutputTokens: sim.FixedCount(2)})
	pid := l.Envoys[0].Proc.Pid()
	body := `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}],"user":"u"}`
	fmt.Printf("\nEnvoy resident memory with the wasm filter\n%10s %10s\n", "requests", "RSS MiB")
	fmt.Printf("%10d %10.1f\n", 0, rssMiB(pid))
	for done := 0; done < 100000; done += 20000 {
		user := "u" + strconv.Itoa(done)
		res := sendLoad(l.Gateway[0], body, 20000, 8, func() string { return user })
		if res.errors > 0 {
			b.Fatalf("%d errors, first: %v", res.errors, res.firstErr)
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
