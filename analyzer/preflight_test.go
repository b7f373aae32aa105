package analyzer

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/xds"
)

func ms(v ...int) []time.Duration {
	out := make([]time.Duration, len(v))
	for i, x := range v {
		out[i] = time.Duration(x) * time.Millisecond
	}
	return out
}

func TestWarmupSettled(t *testing.T) {
	cases := []struct {
		name    string
		ttfts   []time.Duration
		window  int
		tol     float64
		settled bool
		median  time.Duration
	}{
		{"fewer TTFTs than the window is not settled", ms(20, 20), 3, 0.1, false, 0},
		{"fewer than two windows is not settled", ms(20, 20, 20, 20, 20), 3, 0.1, false, 20 * time.Millisecond},
		{"a cold start followed by steady TTFTs settles", ms(900, 400, 21, 20, 19, 20, 21, 19), 3, 0.1, true, 20 * time.Millisecond},
		{"the cold start still in the earlier window is not settled", ms(900, 400, 21, 20, 19, 22), 3, 0.1, false, 20 * time.Millisecond},
		{"TTFTs as spread as prompts are, at one level, settle", ms(40, 90, 60, 35, 95, 62), 3, 0.25, true, 62 * time.Millisecond},
		{"a level still falling is not settled", ms(200, 190, 180, 100, 95, 90), 3, 0.25, false, 95 * time.Millisecond},
		{"medians just outside the tolerance are not settled", ms(111, 111, 111, 100, 100, 100), 3, 0.1, false, 100 * time.Millisecond},
		{"medians at the tolerance settle", ms(110, 110, 110, 100, 100, 100), 3, 0.1, true, 100 * time.Millisecond},
		{"only the last two windows count", ms(5, 5000, 50, 52, 48, 49, 51, 50), 3, 0.05, true, 50 * time.Millisecond},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, m := WarmupSettled(c.ttfts, c.window, c.tol)
			if s != c.settled || m != c.median {
				t.Fatalf("WarmupSettled = %v, %v; want %v, %v", s, m, c.settled, c.median)
			}
		})
	}
}

func answer(score float64, latency time.Duration) PreflightAnswer {
	return PreflightAnswer{Score: score, Scored: true, Latency: latency, TTFT: latency / 4}
}

func pairs(n int, stable, canary PreflightAnswer) []PromptResult {
	out := make([]PromptResult, n)
	for i := range out {
		out[i] = PromptResult{Category: "chat", Stable: stable, Canary: canary}
	}
	return out
}

func TestGatePreflight(t *testing.T) {
	g := DefaultPreflightPolicy().Gates
	warm := WarmupResult{Requests: 6, Settled: true, TTFTMedian: 20 * time.Millisecond}
	good, bad := answer(1, 100*time.Millisecond), answer(0, 100*time.Millisecond)
	failed := PreflightAnswer{Failed: true, Error: "status 500"}
	cases := []struct {
		name    string
		warm    WarmupResult
		results []PromptResult
		action  Action
		says    string
	}{
		{"a canary as good as stable passes", warm, pairs(20, good, good), ActionProceed, "pre-flight passed"},
		{"a canary losing most pairs rolls back", warm, append(pairs(10, good, bad), pairs(10, good, good)...), ActionRollback, "net loss share 50.0 % over 10.0 %"},
		{"one more loss than win in twenty passes", warm, append(append(pairs(2, good, bad), pairs(1, bad, good)...), pairs(17, good, good)...), ActionProceed, "net loss share 5.0 %"},
		{"a failed canary answer is an error and a loss", warm, append(pairs(1, good, failed), pairs(19, good, good)...), ActionRollback, "1 of the canary's requests failed (at most 0 allowed)"},
		{"warm-up errors count against the canary", WarmupResult{Requests: 8, Errors: 2, Settled: true}, pairs(5, good, good), ActionRollback, "2 of the canary's requests failed"},
		{"a slow canary rolls back", warm, pairs(10, good, answer(1, 200*time.Millisecond)), ActionRollback, "latency is 2× stable's"},
		{"an unsettled warm-up rolls back", WarmupResult{Requests: 50, Took: time.Minute}, pairs(5, good, good), ActionRollback, "did not settle in 50 warm-up requests"},
		{"an unjudged pair pauses, never passes", warm, append(pairs(1, good, PreflightAnswer{Latency: time.Millisecond * 100}), pairs(9, good, good)...), ActionPause, "1 suite pairs could not be judged"},
		{"a pair whose stable answer failed is not judged", warm, append(pairs(1, failed, good), pairs(9, good, good)...), ActionProceed, "9 judged pairs"},
		{"warm-up alone passes without a suite", warm, nil, ActionProceed, "suite 0 prompts"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := GatePreflight(g, c.warm, c.results, 0.05)
			if v.Action != c.action || !strings.Contains(v.Reason, c.says) {
				t.Fatalf("got %s: %s\nwant %s saying %q", v.Action, v.Reason, c.action, c.says)
			}
		})
	}
}

func TestGatePreflightTalliesCategories(t *testing.T) {
	good, bad := answer(1, time.Second), answer(0, time.Second)
	rs := []PromptResult{{Category: "math", Stable: good, Canary: bad}, {Category: "math", Stable: good, Canary: good}, {Category: "chat", Stable: bad, Canary: good}}
	v := GatePreflight(DefaultPreflightPolicy().Gates, WarmupResult{Settled: true}, rs, 0.05)
	if v.Categories["math"] != (CategoryTally{Losses: 1, Ties: 1}) || v.Categories["chat"] != (CategoryTally{Wins: 1}) {
		t.Fatalf("categories %+v", v.Categories)
	}
}

func TestParseSuite(t *testing.T) {
	cases := []struct {
		name, in string
		n        int
		err      string
	}{
		{"prompts with reference, rubric and category; blank lines skipped", `{"prompt":"2+2?","reference":"4","category":"math"}

{"prompt":"Write a haiku","rubric":"three lines, 5-7-5"}
`, 2, ""},
		{"an unknown field names its line", "{\"prompt\":\"a\"}\n{\"promt\":\"b\"}\n", 0, "suite line 2: json: unknown field"},
		{"a prompt without text", `{"category":"x"}`, 0, "suite line 1: prompt is required"},
		{"a line that is not an object", `["a"]`, 0, "suite line 1"},
		{"an empty file", "\n\n", 0, "suite: no prompt"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := ParseSuite(strings.NewReader(c.in))
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err %v, want %q", err, c.err)
				}
				return
			}
			if err != nil || len(s) != c.n {
				t.Fatalf("%d prompts, %v", len(s), err)
			}
		})
	}
}

func TestPreflightPolicyValidateNamesEveryBadField(t *testing.T) {
	if err := DefaultPreflightPolicy().Validate(); err != nil {
		t.Fatalf("the defaults are invalid: %v", err)
	}
	p := PreflightPolicy{Warmup: WarmupPolicy{Window: 1, Tolerance: 2, MaxRequests: -1}, Gates: PreflightGates{MaxErrors: -1, MaxLatencyRatio: -1}, Suite: []SuitePrompt{{}}}.WithDefaults()
	err := p.Validate()
	for _, want := range []string{"warmup.window 1", "warmup.tolerance 2", "warmup.max_requests -1", "gates.max_errors -1", "gates.max_latency_ratio -1", "suite prompt 1: prompt is required"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %q", err, want)
		}
	}
}

func TestStartPlansAPreflight(t *testing.T) {
	unknown := xds.VersionMetadata{} // grades high risk
	medium := xds.VersionMetadata{BaseModel: "b"}
	gw := &PreflightGateway{URL: "http://127.0.0.1:1", ForceKey: "k"}
	cases := []struct {
		name      string
		meta      xds.VersionMetadata
		gateway   *PreflightGateway
		req       StartRequest
		preflight bool
		err       error
		says      string
	}{
		{"high risk gets one by default", unknown, gw, StartRequest{}, true, nil, "pre-flight first"},
		{"high risk skips it on request", unknown, gw, StartRequest{NoPreflight: true}, false, nil, ""},
		{"high risk without a gateway says why it has none", unknown, nil, StartRequest{}, false, nil, "no pre-flight despite high risk"},
		{"medium risk has none by default", medium, gw, StartRequest{}, false, nil, ""},
		{"medium risk gets one on request", medium, gw, StartRequest{Preflight: &PreflightPolicy{Suite: []SuitePrompt{{Prompt: "p"}}}}, true, nil, "then 1 suite prompts"},
		{"a requested one without a gateway is refused", medium, nil, StartRequest{Preflight: &PreflightPolicy{}}, false, ErrInvalid, "--gateway-url"},
		{"preflight and no_preflight together are refused", medium, gw, StartRequest{Preflight: &PreflightPolicy{}, NoPreflight: true}, false, ErrInvalid, "both set"},
		{"an invalid policy is refused", medium, gw, StartRequest{Preflight: &PreflightPolicy{Gates: PreflightGates{MaxErrors: -2}}}, false, ErrInvalid, "gates.max_errors -2"},
		{"an A/B test has none", medium, gw, StartRequest{Mode: ModeABTest, Preflight: &PreflightPolicy{}}, false, ErrInvalid, "not in mode abtest"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t)
			r.runner.Models = fakeModels{traffic: r.traffic, models: map[string]*xds.Model{"m": {
				Name: "m", Stable: "v1",
				Versions: []xds.Version{{Name: "v1", Metadata: c.meta}, {Name: "v2", Metadata: c.meta}},
				Weights:  map[string]float64{"v1": 100},
			}}}
			r.runner.Gateway = c.gateway
			req := c.req
			req.Model, req.Canary = "m", "v2"
			ro, err := r.runner.Start(context.Background(), req)
			if c.err != nil {
				if !errors.Is(err, c.err) || !strings.Contains(err.Error(), c.says) {
					t.Fatalf("err %v, want %v saying %q", err, c.err, c.says)
				}
				if r.traffic.count() != 0 {
					t.Fatal("a refused start moved traffic")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ro.Preflight.Running() != c.preflight {
				t.Fatalf("pre-flight %+v, want running %v", ro.Preflight, c.preflight)
			}
			if c.preflight && (ro.CanaryWeight() != 0 || r.traffic.last().weights["v2"] != 0) {
				t.Fatalf("the canary must stay at 0 %% during the pre-flight: %g, %v", ro.CanaryWeight(), r.traffic.last().weights)
			}
			if !strings.Contains(ro.History[0].Reason, c.says) {
				t.Fatalf("start event %q does not say %q", ro.History[0].Reason, c.says)
			}
		})
	}
}

func TestARolloutInPreflightHoldsWithoutAGateway(t *testing.T) {
	r := newRig(t)
	r.runner.Gateway = &PreflightGateway{URL: "http://127.0.0.1:1"}
	ro, err := r.runner.Start(context.Background(), StartRequest{Model: "m", Canary: "v2", Preflight: &PreflightPolicy{}})
	if err != nil {
		t.Fatal(err)
	}
	r.runner.Gateway = nil // a restarted analyzer configured without one
	got, err := r.runner.Step(context.Background(), ro.ID)
	if err == nil || got.Status != RolloutRunning || !got.Preflight.Running() || !strings.Contains(got.LastError, "no gateway URL") {
		t.Fatalf("want a hold naming the missing gateway: %v, %+v", err, got)
	}
	if r.traffic.last().weights["v2"] != 0 {
		t.Fatalf("the canary got traffic: %v", r.traffic.last().weights)
	}
}
