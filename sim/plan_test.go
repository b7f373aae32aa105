package sim

import (
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func plans(p Profile, n, maxTokens int) []Plan {
	p = p.withDefaults()
	out := make([]Plan, n)
	for i := range out {
		out[i] = MakePlan(p, fmt.Appendf(nil, "request-%d", i), maxTokens, 10)
	}
	return out
}

func TestPlanIsDeterministicUnderSeed(t *testing.T) {
	p := Profile{Version: "v", Seed: 7, TTFT: LogNormalMedianP99(100, 400), ITL: Uniform(5, 50),
		OutputTokens: UniformCount(1, 64), ErrorRate: 0.1, AbortRate: 0.2, BadAnswerRate: 0.3}
	a := plans(p, 200, 0)

	// The same plans, computed concurrently in reverse order.
	b := make([]Plan, len(a))
	var wg sync.WaitGroup
	for i := len(b) - 1; i >= 0; i-- {
		wg.Go(func() { b[i] = MakePlan(p.withDefaults(), fmt.Appendf(nil, "request-%d", i), 0, 10) })
	}
	wg.Wait()
	if !reflect.DeepEqual(a, b) {
		t.Fatal("same seed and keys gave different plans")
	}

	p.Seed = 8
	c := plans(p, 200, 0)
	same := 0
	for i := range a {
		if a[i].TTFT == c[i].TTFT {
			same++
		}
	}
	if same > 2 {
		t.Errorf("a different seed left %d of 200 TTFTs unchanged", same)
	}
}

// binomialOK reports whether k successes in n trials fit rate p within
// five standard deviations (a false alarm about once in 3.5 million runs).
func binomialOK(k, n int, p float64) bool {
	sd := math.Sqrt(float64(n) * p * (1 - p))
	return math.Abs(float64(k)-float64(n)*p) <= 5*sd+1e-9
}

func TestPlanHonoursOutcomeRates(t *testing.T) {
	const n = 4000
	p := Profile{Version: "v", Seed: 42, ErrorRate: 0.05, RateLimitRate: 0.03, AbortRate: 0.04, RefusalRate: 0.02, BadAnswerRate: 0.14}
	want := map[Outcome]float64{
		OutcomeError: 0.05, OutcomeRateLimit: 0.03, OutcomeAbort: 0.04, OutcomeRefusal: 0.02, OutcomeBad: 0.14, OutcomeOK: 0.72,
	}
	got := map[Outcome]int{}
	for _, pl := range plans(p, n, 0) {
		got[pl.Outcome]++
	}
	for o, rate := range want {
		if !binomialOK(got[o], n, rate) {
			t.Errorf("%s: %d of %d, want about %.0f", o, got[o], n, rate*n)
		}
	}
}

func TestPlanLatencyDistributions(t *testing.T) {
	cases := []struct {
		name         string
		d            Dist
		wantMedianMS float64
		wantMinMS    float64
		wantMaxMS    float64
	}{
		{"fixed", Fixed(50), 50, 50, 50},
		{"zero", Dist{}, 0, 0, 0},
		{"uniform", Uniform(10, 30), 20, 10, 30},
		{"lognormal", LogNormalMedianP99(100, 400), 100, 0, math.Inf(1)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var ms []float64
			for _, pl := range plans(Profile{Version: "v", TTFT: tc.d}, 2000, 0) {
				ms = append(ms, float64(pl.TTFT)/float64(time.Millisecond))
			}
			slices.Sort(ms)
			med := ms[len(ms)/2]
			if math.Abs(med-tc.wantMedianMS) > 0.06*tc.wantMedianMS+1e-6 {
				t.Errorf("median %.2f ms, want %.2f", med, tc.wantMedianMS)
			}
			if ms[0] < tc.wantMinMS-1e-6 || ms[len(ms)-1] > tc.wantMaxMS+1e-6 {
				t.Errorf("range [%.2f, %.2f] ms outside [%v, %v]", ms[0], ms[len(ms)-1], tc.wantMinMS, tc.wantMaxMS)
			}
			if tc.name == "lognormal" {
				// About 1% above p99: 20 of 2000, binomial sd 4.4.
				above := len(ms) - sort99(ms, 400)
				if !binomialOK(above, len(ms), 0.01) {
					t.Errorf("%d of %d above p99_ms, want about 20", above, len(ms))
				}
			}
		})
	}
}

// sort99 is the number of sorted values at or below x.
func sort99(sorted []float64, x float64) int {
	i, _ := slices.BinarySearch(sorted, x)
	return i
}

func TestPlanTokens(t *testing.T) {
	cases := []struct {
		name       string
		p          Profile
		maxTokens  int
		wantTokens int
		wantFinish string
	}{
		{"fixed length stops", Profile{Version: "v", OutputTokens: FixedCount(20)}, 0, 20, FinishStop},
		{"max_tokens above length stops", Profile{Version: "v", OutputTokens: FixedCount(20)}, 21, 20, FinishStop},
		{"max_tokens below length cuts with length", Profile{Version: "v", OutputTokens: FixedCount(20)}, 5, 5, FinishLength},
		{"default length is 32", Profile{Version: "v"}, 0, 32, FinishStop},
		{"refusal is the refusal text", Profile{Version: "v", RefusalRate: 1, OutputTokens: FixedCount(50)}, 0, len(refusalTokens), FinishStop},
		{"bad answer makes room for the marker", Profile{Version: "v", BadAnswerRate: 1, OutputTokens: FixedCount(2)}, 0, len(markerTokens), FinishStop},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, pl := range plans(tc.p, 20, tc.maxTokens) {
				if pl.CompletionTokens != tc.wantTokens || pl.FinishReason != tc.wantFinish {
					t.Fatalf("tokens %d finish %q, want %d %q", pl.CompletionTokens, pl.FinishReason, tc.wantTokens, tc.wantFinish)
				}
				if len(pl.ITL) != pl.CompletionTokens-1 {
					t.Fatalf("%d gaps for %d tokens", len(pl.ITL), pl.CompletionTokens)
				}
			}
		})
	}
}

func TestPlanTexts(t *testing.T) {
	for _, pl := range plans(Profile{Version: "v", BadAnswerRate: 0.5, RefusalRate: 0.2, OutputTokens: UniformCount(1, 40)}, 500, 0) {
		text := pl.Text(pl.CompletionTokens)
		switch pl.Outcome {
		case OutcomeBad:
			if !strings.Contains(text, BadAnswerMarker) {
				t.Fatalf("bad answer without the marker: %q", text)
			}
		case OutcomeRefusal:
			if text != RefusalText {
				t.Fatalf("refusal %q, want %q", text, RefusalText)
			}
		case OutcomeOK:
			if strings.Contains(text, "Eiffel") || strings.Contains(text, "Berlin") || text == "" {
				t.Fatalf("good answer %q should be non-empty and carry no part of the marker", text)
			}
		}
		if JudgeScore(text) != map[bool]float64{true: 0, false: 1}[pl.Outcome == OutcomeBad] {
			t.Fatalf("JudgeScore(%q) = %v for outcome %s", text, JudgeScore(text), pl.Outcome)
		}
	}
}

func TestPlanAbortCutsBeforeTheEnd(t *testing.T) {
	for _, pl := range plans(Profile{Version: "v", AbortRate: 1, OutputTokens: UniformCount(1, 10)}, 500, 0) {
		if pl.AbortAfter < 1 || pl.AbortAfter >= pl.CompletionTokens {
			t.Fatalf("abort after %d of %d tokens, want within [1, %d)", pl.AbortAfter, pl.CompletionTokens, pl.CompletionTokens)
		}
		if pl.DeliveredTokens() != pl.AbortAfter {
			t.Fatalf("delivered %d, want %d", pl.DeliveredTokens(), pl.AbortAfter)
		}
	}
}

func TestJudgeScore(t *testing.T) {
	cases := []struct {
		text string
		want float64
	}{
		{"Paris is the capital of France.", 1},
		{"", 1},
		{"Sure. " + BadAnswerMarker + " Anything else?", 0},
		{"The Eiffel Tower is in Paris.", 1},
	}
	for _, tc := range cases {
		if got := JudgeScore(tc.text); got != tc.want {
			t.Errorf("JudgeScore(%q) = %v, want %v", tc.text, got, tc.want)
		}
	}
}
