//go:build integration

package envoytest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/internal/procs"
)

// load runs n streamed requests against url with c in flight and returns
// each request's latency (send → last byte) and the wall time of the run.
func load(ctx context.Context, url string, n, c int, hdr map[string]string) ([]time.Duration, time.Duration, error) {
	lat := make([]time.Duration, n)
	next := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	start := time.Now()
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				t0 := time.Now()
				code, _, err := completion(ctx, url, hdr)
				lat[i] = time.Since(t0)
				if err == nil && code != 200 {
					err = fmt.Errorf("status %d", code)
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	return lat, time.Since(start), firstErr
}

func pct(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[int(p*float64(len(s)-1))]
}

// envoyCPUPerRequest returns the CPU, in µs per request, that the process
// pid (Envoy) spent while run handled n requests.
func envoyCPUPerRequest(b *testing.B, pid, n int, run func()) float64 {
	b.Helper()
	c0, err := procs.ThreadsCPU(pid)
	if err != nil {
		b.Fatal(err)
	}
	run()
	c1, err := procs.ThreadsCPU(pid)
	if err != nil {
		b.Fatal(err)
	}
	return float64(c1-c0) / float64(time.Microsecond) / float64(n)
}

// runListeners runs Envoy with workers workers, the given clusters, and n
// listeners on free loopback ports, the ith built by listenerAt, until
// the benchmark ends. It returns Envoy and each listener's URL once all
// of them accept connections.
func runListeners(b *testing.B, workers, n int, listenerAt func(i int, port uint32) *listenerv3.Listener, clusters ...*clusterv3.Cluster) (*procs.Proc, []string) {
	b.Helper()
	bin, err := procs.LookBinary("LLMCANARY_ENVOY", "envoy", "install it with `make deps`")
	if err != nil {
		b.Fatal(err)
	}
	ports, err := procs.FreePorts(n + 1)
	if err != nil {
		b.Fatal(err)
	}
	bs := &bootstrapv3.Bootstrap{
		Admin:           &bootstrapv3.Admin{Address: socketAddress("127.0.0.1", uint32(ports[n]))},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{Clusters: clusters},
	}
	urls := make([]string, n)
	for i := range n {
		bs.StaticResources.Listeners = append(bs.StaticResources.Listeners, listenerAt(i, uint32(ports[i])))
		urls[i] = fmt.Sprintf("http://127.0.0.1:%d", ports[i])
	}
	p := runBootstrap(b, bin, bs, workers)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, u := range urls {
		if err := procs.WaitTCP(ctx, strings.TrimPrefix(u, "http://")); err != nil {
			b.Fatalf("%v\n%s", err, p.Tail(30))
		}
	}
	return p, urls
}

// interleaved runs phase for each of k configurations, rounds times, in
// reverse order every other round so that a drift in machine load hits
// them alike, and returns each configuration's results.
func interleaved(rounds, k int, phase func(j int) float64) [][]float64 {
	out := make([][]float64, k)
	for r := range rounds {
		for j := range k {
			if r%2 == 1 {
				j = k - 1 - j
			}
			out[j] = append(out[j], phase(j))
		}
	}
	return out
}

func median(v []float64) float64 { s := slices.Clone(v); slices.Sort(s); return s[len(s)/2] }

// BenchmarkExtprocOverhead compares Envoy with the ext_proc filter and
// service against Envoy alone on the same upstream, in one run: latency
// percentiles, throughput, and the service's CPU per streamed request. The
// client, upstream and service share this process, so the service's CPU is
// this process's CPU with the filter minus its CPU without it for the same
// requests (getrusage before and after each phase). Phases alternate so a
// drift in machine load hits both sides alike.
//
//	go test -tags integration -run '^$' -bench . -benchtime 1x ./extproc/envoytest/
func BenchmarkExtprocOverhead(b *testing.B) {
	const (
		perPhase = 150
		phases   = 2
		inFlight = 8
		tokens   = 32
	)
	svc := startService(b)
	env := startEnvoy(b, startUpstream(b), svc.addr, fastClose)
	hdr := map[string]string{hdrTokens: fmt.Sprint(tokens), hdrMode: "usage"}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// Warm both listeners' connection pools.
	for _, u := range []string{env.plainURL, env.withURL} {
		if _, _, err := load(ctx, u, 2*inFlight, inFlight, hdr); err != nil {
			b.Fatal(err)
		}
	}
	svc.sink.wait(b, 2*inFlight, 10*time.Second)
	svc.sink.reset()

	for range b.N {
		var plainLat, withLat []time.Duration
		var plainWall, withWall, plainCPU, withCPU time.Duration
		for p := 0; p < phases; p++ {
			c0 := procs.SelfCPU()
			lat, wall, err := load(ctx, env.plainURL, perPhase, inFlight, hdr)
			c1 := procs.SelfCPU()
			if err != nil {
				b.Fatal(err)
			}
			plainLat, plainWall, plainCPU = append(plainLat, lat...), plainWall+wall, plainCPU+c1-c0

			c0 = procs.SelfCPU()
			lat, wall, err = load(ctx, env.withURL, perPhase, inFlight, hdr)
			svc.sink.wait(b, (p+1)*perPhase, 10*time.Second) // the service's work is done
			c1 = procs.SelfCPU()
			if err != nil {
				b.Fatal(err)
			}
			withLat, withWall, withCPU = append(withLat, lat...), withWall+wall, withCPU+c1-c0
		}
		n := float64(perPhase * phases)
		recs := svc.sink.wait(b, perPhase*phases, 10*time.Second)
		for _, r := range recs {
			if r.CompletionTokens != tokens || r.Failure != "" {
				b.Fatalf("record %s: %d tokens, failure %q", r.RequestID, r.CompletionTokens, r.Failure)
			}
		}
		svc.sink.reset()

		p50, p99 := pct(plainLat, 0.50), pct(plainLat, 0.99)
		w50, w99 := pct(withLat, 0.50), pct(withLat, 0.99)
		rpsPlain, rpsWith := n/plainWall.Seconds(), n/withWall.Seconds()
		svcCPU := (withCPU - plainCPU).Seconds() / n * 1e6
		b.ReportMetric(float64(w50)/float64(p50), "p50-ratio")
		b.ReportMetric(float64(w99)/float64(p99), "p99-ratio")
		b.ReportMetric(rpsWith/rpsPlain, "throughput-ratio")
		b.ReportMetric(svcCPU, "service-cpu-µs/req")
		b.Logf("%d streamed requests of %d tokens per side, %d in flight", int(n), tokens, inFlight)
		b.Logf("Envoy alone:      p50 %v  p99 %v  %.0f req/s  process CPU %v", p50, p99, rpsPlain, plainCPU)
		b.Logf("Envoy + ext_proc: p50 %v  p99 %v  %.0f req/s  process CPU %v", w50, w99, rpsWith, withCPU)
		b.Logf("ratios: p50 %.3f  p99 %.3f  throughput %.3f; service CPU %.0f µs per streamed request",
			float64(w50)/float64(p50), float64(w99)/float64(p99), rpsWith/rpsPlain, svcCPU)
	}
}

// logCounter counts access-log entries.
type logCounter struct {
	mu sync.Mutex
	n  int
	ch chan struct{}
}

func (c *logCounter) WriteLog(extproc.LogEntry) {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
	select {
	case c.ch <- struct{}{}:
	default:
	}
}

// waitFor returns once n entries arrived in all.
func (c *logCounter) waitFor(b *testing.B, n int) {
	b.Helper()
	deadline := time.After(30 * time.Second)
	for {
		c.mu.Lock()
		have := c.n
		c.mu.Unlock()
		if have >= n {
			return
		}
		select {
		case <-c.ch:
		case <-deadline:
			b.Fatalf("%d access-log entries arrived, want %d", have, n)
		}
	}
}

// BenchmarkAccessLogEnvoyCPU measures what the access log (every request,
// envoyconfig.AccessLog) costs Envoy, against what measuring a request
// through ext_proc costs it: its process's CPU per request on a listener
// with neither, one with the access log, and one with the access log and
// the ext_proc filter, same route and upstream, for non-streamed answers
// and for 16-token streams, 8 requests in flight, Envoy with 2 workers. A
// phase ends when the service has every access-log entry and record, so
// Envoy's sending is counted. 3 interleaved rounds; medians.
//
//	go test -tags integration -run '^$' -bench AccessLogEnvoyCPU -benchtime 1x ./extproc/envoytest/
func BenchmarkAccessLogEnvoyCPU(b *testing.B) {
	const (
		rounds   = 3
		inFlight = 8
	)
	logs := &logCounter{ch: make(chan struct{}, 1)}
	records := newMemSink()
	svc := startServiceWith(b, extproc.Options{Sink: records, RequestLog: logs}, records)
	env := startEnvoyWith(b, startUpstream(b), svc.addr, envoyOptions{filter: fastClose, accessLog: true})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	logged, measured := 0, 0
	phase := func(url string, n int, hdr map[string]string) float64 {
		return envoyCPUPerRequest(b, env.proc.Pid(), n, func() {
			if _, _, err := load(ctx, url, n, inFlight, hdr); err != nil {
				b.Fatal(err)
			}
			if url != env.plainURL {
				logged += n
				logs.waitFor(b, logged)
			}
			if url == env.withURL {
				measured += n
				records.wait(b, measured, 30*time.Second)
			}
		})
	}
	kinds := []struct {
		name string
		n    int
		hdr  map[string]string
	}{
		{"non-streamed", 4000, map[string]string{hdrMode: "json", hdrTokens: "16"}},
		{"16-token stream", 2000, map[string]string{hdrTokens: "16"}},
	}
	listeners := []struct{ name, url string }{
		{"alone", env.plainURL}, {"access-log", env.loggedURL}, {"access-log+ext_proc", env.withURL},
	}
	for _, k := range kinds { // warm every listener
		for _, l := range listeners {
			phase(l.url, k.n/10, k.hdr)
		}
	}
	for range b.N {
		for _, k := range kinds {
			cpu := interleaved(rounds, len(listeners), func(j int) float64 { return phase(listeners[j].url, k.n, k.hdr) })
			alone := median(cpu[0])
			unit := strings.ReplaceAll(k.name, " ", "-")
			for j, l := range listeners {
				m := median(cpu[j])
				b.ReportMetric(m, "µs/req-"+l.name+"-"+unit)
				b.Logf("%s, Envoy %s: CPU µs per request %v; median %.0f (%+.0f, ×%.2f of Envoy alone)",
					k.name, l.name, cpu[j], m, m-alone, m/alone)
			}
		}
	}
}
