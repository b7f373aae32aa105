//go:build integration

package envoytest

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/internal/wire"
)

// BenchmarkFilterOverhead measures, in one run against one Envoy, the
// per-request latency of a body-routed chat request through the listener
// with the wasm filter and through the same routes without it, alternating
// so both see the same machine load. It reports p50/p99 of each and their
// ratios, then the wasm VM's memory from Envoy's admin stats after all
// requests. Run with -bench . -benchtime 1x.
func BenchmarkFilterOverhead(b *testing.B) {
	e := startEnvoy(b, testConfig())
	const n = 3000
	body := chatBody(model, "")
	// Without the filter nothing sets the model header; the baseline
	// request carries it so it takes the same route and upstream.
	plainHdr := map[string]string{wire.HeaderModel: model, wire.HeaderBucket: "1"}
	for i := 0; i < 200; i++ { // warm both paths and the VM
		do(b, "POST", e.url+"/v1/chat/completions", map[string]string{wire.HeaderUserID: "warm"}, body)
		do(b, "POST", e.plainURL+"/v1/chat/completions", plainHdr, body)
	}
	rssWarm := rssBytes(b, e.proc.Pid())
	with, without := make([]time.Duration, 0, n), make([]time.Duration, 0, n)
	b.ResetTimer()
	for i := 0; i < n; i++ {
		t0 := time.Now()
		r := do(b, "POST", e.url+"/v1/chat/completions", map[string]string{wire.HeaderUserID: fmt.Sprintf("u%d", i)}, body)
		with = append(with, time.Since(t0))
		t0 = time.Now()
		p := do(b, "POST", e.plainURL+"/v1/chat/completions", plainHdr, body)
		without = append(without, time.Since(t0))
		if r.status != 200 || p.status != 200 {
			b.Fatalf("statuses %d (filter) %d (plain)", r.status, p.status)
		}
	}
	b.StopTimer()
	q := func(d []time.Duration, f float64) float64 {
		s := slices.Clone(d)
		slices.Sort(s)
		return float64(s[int(f*float64(len(s)-1))].Microseconds())
	}
	b.ReportMetric(q(with, 0.5), "filter-p50-µs")
	b.ReportMetric(q(with, 0.99), "filter-p99-µs")
	b.ReportMetric(q(without, 0.5), "plain-p50-µs")
	b.ReportMetric(q(without, 0.99), "plain-p99-µs")
	b.ReportMetric(q(with, 0.5)/q(without, 0.5), "p50-ratio")
	b.ReportMetric(q(with, 0.99)/q(without, 0.99), "p99-ratio")
	// Envoy reports no wasm memory stats; the process's resident set (V8's
	// linear memory included) after warm-up and after the run shows whether
	// the VM grows with requests.
	rssAfter := rssBytes(b, e.proc.Pid())
	b.ReportMetric(float64(rssWarm)/(1<<20), "envoy-rss-warm-MiB")
	b.ReportMetric(float64(rssAfter)/(1<<20), "envoy-rss-after-MiB")

	resp, err := http.Get(e.adminURL + "/memory")
	if err != nil {
		b.Fatal(err)
	}
	mem, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	b.Logf("after %d filtered requests, Envoy /memory: %s", n+200, mem)
}

// rssBytes returns the resident set size of process pid.
func rssBytes(b *testing.B, pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb int64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
			return kb << 10
		}
	}
	b.Fatal("no VmRSS in /proc status")
	return 0
}
