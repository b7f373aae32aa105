package analyzer

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/llmcanary/llmcanary/analyzer/stats"
	"github.com/llmcanary/llmcanary/internal/config"
)

// The pre-flight stage runs before any user request reaches the canary:
// forced requests through the gateway warm the canary up until its TTFT
// settles, then a prompt suite is sent to both versions, each pair of
// answers to the same prompt is judged, and the gates decide whether the
// rollout starts its user traffic or stops. Forced traffic is left out of
// the user statistics; pre-flight requests carry request ids with the
// prefix PreflightIDPrefix so the telemetry can show them apart.

// PreflightIDPrefix starts the request id of every pre-flight request:
// preflight:<rollout>:<phase>:<n>:<version>.
const PreflightIDPrefix = "preflight:"

// PreflightPolicy configures a rollout's pre-flight stage. Zero fields
// take the defaults of DefaultPreflightPolicy.
type PreflightPolicy struct {
	Warmup WarmupPolicy   `json:"warmup"`
	Gates  PreflightGates `json:"gates"`
	// Suite is the prompt suite sent to both versions (ParseSuite reads
	// it from JSONL); empty: warm-up and its error gate only.
	Suite []SuitePrompt `json:"suite,omitempty"`
	// Concurrency is the most pre-flight requests in flight. Default 4.
	Concurrency int `json:"concurrency,omitempty"`
	// RequestTimeout bounds one request. Default 60s.
	RequestTimeout config.Duration `json:"request_timeout,omitempty"`
}

// WarmupPolicy says when the canary is warm: the median TTFT of the last
// Window requests is within Tolerance (relative) of the median of the
// Window before them, so the level has stopped falling while single
// requests may still differ as much as prompts and answers do; after at
// most MaxRequests requests and MaxDuration.
type WarmupPolicy struct {
	// Window is how many TTFTs each median is taken over. Default 5.
	Window int `json:"window,omitempty"`
	// Tolerance is the largest relative distance between the two
	// medians. Default 0.25.
	Tolerance float64 `json:"tolerance,omitempty"`
	// MaxRequests bounds the warm-up requests. Default 50.
	MaxRequests int `json:"max_requests,omitempty"`
	// MaxDuration bounds the warm-up's time. Default 2m.
	MaxDuration config.Duration `json:"max_duration,omitempty"`
}

// PreflightGates are the pre-flight's pass conditions.
type PreflightGates struct {
	// MaxNetLossShare bounds the canary's losses minus its wins over the
	// judged pairs (ties count in the denominator): 0.1 lets the canary
	// lose one more pair than it wins in ten. Default 0.1.
	MaxNetLossShare float64 `json:"max_net_loss_share,omitempty"`
	// MaxErrors is how many of the canary's pre-flight requests (warm-up
	// and suite) may fail. Default 0.
	MaxErrors int `json:"max_errors,omitempty"`
	// MaxLatencyRatio bounds the geometric mean of the canary's total
	// latency over stable's on the same prompts. Default 1.5.
	MaxLatencyRatio float64 `json:"max_latency_ratio,omitempty"`
}

// DefaultPreflightPolicy returns the defaults of a pre-flight stage.
func DefaultPreflightPolicy() PreflightPolicy {
	return PreflightPolicy{
		Warmup:      WarmupPolicy{Window: 5, Tolerance: 0.25, MaxRequests: 50, MaxDuration: config.Duration(2 * time.Minute)},
		Gates:       PreflightGates{MaxNetLossShare: 0.1, MaxLatencyRatio: 1.5},
		Concurrency: 4, RequestTimeout: config.Duration(time.Minute),
	}
}

// WithDefaults fills the zero fields.
func (p PreflightPolicy) WithDefaults() PreflightPolicy {
	d := DefaultPreflightPolicy()
	fill := func(v *float64, def float64) {
		if *v == 0 {
			*v = def
		}
	}
	filli := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	filli(&p.Warmup.Window, d.Warmup.Window)
	fill(&p.Warmup.Tolerance, d.Warmup.Tolerance)
	filli(&p.Warmup.MaxRequests, d.Warmup.MaxRequests)
	if p.Warmup.MaxDuration == 0 {
		p.Warmup.MaxDuration = d.Warmup.MaxDuration
	}
	fill(&p.Gates.MaxNetLossShare, d.Gates.MaxNetLossShare)
	fill(&p.Gates.MaxLatencyRatio, d.Gates.MaxLatencyRatio)
	filli(&p.Concurrency, d.Concurrency)
	if p.RequestTimeout == 0 {
		p.RequestTimeout = d.RequestTimeout
	}
	return p
}

// Validate reports every invalid field of a policy with defaults applied.
func (p PreflightPolicy) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf("preflight: "+format, a...)) }
	w := p.Warmup
	if w.Window < 2 {
		bad("warmup.window %d must be at least 2", w.Window)
	}
	if !(w.Tolerance > 0 && w.Tolerance < 1) {
		bad("warmup.tolerance %v must be in (0, 1)", w.Tolerance)
	}
	if w.MaxRequests < 2*w.Window {
		bad("warmup.max_requests %d must be at least twice warmup.window %d", w.MaxRequests, w.Window)
	}
	if w.MaxDuration.D() <= 0 {
		bad("warmup.max_duration %v must be positive", w.MaxDuration.D())
	}
	g := p.Gates
	if !(g.MaxNetLossShare > -1 && g.MaxNetLossShare <= 1) {
		bad("gates.max_net_loss_share %v must be in (-1, 1]", g.MaxNetLossShare)
	}
	if g.MaxErrors < 0 {
		bad("gates.max_errors %d must not be negative", g.MaxErrors)
	}
	if !(g.MaxLatencyRatio > 0) || math.IsInf(g.MaxLatencyRatio, 0) {
		bad("gates.max_latency_ratio %v must be positive", g.MaxLatencyRatio)
	}
	if p.Concurrency < 1 {
		bad("concurrency %d must be positive", p.Concurrency)
	}
	if p.RequestTimeout.D() <= 0 {
		bad("request_timeout %v must be positive", p.RequestTimeout.D())
	}
	for i, s := range p.Suite {
		if err := s.validate(); err != nil {
			bad("suite prompt %d: %v", i+1, err)
		}
	}
	return errors.Join(errs...)
}

// SuitePrompt is one prompt of a pre-flight suite, one JSON object per
// line of the suite file.
type SuitePrompt struct {
	Prompt string `json:"prompt"`
	// Reference is a good answer, Rubric what a good answer does; either
	// is shown to the judge with both answers.
	Reference string `json:"reference,omitempty"`
	Rubric    string `json:"rubric,omitempty"`
	Category  string `json:"category,omitempty"`
}

func (s SuitePrompt) validate() error {
	if s.Prompt == "" {
		return errors.New("prompt is required")
	}
	return nil
}

// MaxSuitePrompts bounds a suite: it travels in the start request and is
// kept with the rollout.
const MaxSuitePrompts = 1000

// ParseSuite reads a prompt suite: JSON Lines, one SuitePrompt per line,
// blank lines skipped. An unknown field, a line that is not an object or
// a prompt without text is an error naming its line.
func ParseSuite(r io.Reader) ([]SuitePrompt, error) {
	var out []SuitePrompt
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var p SuitePrompt
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&p); err != nil {
			return nil, fmt.Errorf("suite line %d: %w", n, err)
		}
		if err := p.validate(); err != nil {
			return nil, fmt.Errorf("suite line %d: %w", n, err)
		}
		out = append(out, p)
		if len(out) > MaxSuitePrompts {
			return nil, fmt.Errorf("suite line %d: more than %d prompts", n, MaxSuitePrompts)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("suite: %w", err)
	}
	if len(out) == 0 {
		return nil, errors.New("suite: no prompt")
	}
	return out, nil
}

// WarmupSettled reports whether the canary is warm: the median of the
// last window TTFTs lies within tol (relative to it) of the median of the
// window before. It returns the last window's median (0 with fewer than
// window TTFTs).
func WarmupSettled(ttfts []time.Duration, window int, tol float64) (bool, time.Duration) {
	if window < 1 || len(ttfts) < window {
		return false, 0
	}
	n := len(ttfts)
	last := medianDuration(ttfts[n-window:])
	if n < 2*window {
		return false, last
	}
	prev := medianDuration(ttfts[n-2*window : n-window])
	return math.Abs(float64(prev-last)) <= tol*float64(last), last
}

func medianDuration(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}

// PreflightAnswer is one version's answer to a pre-flight request.
type PreflightAnswer struct {
	Text    string        `json:"-"`
	Failed  bool          `json:"failed,omitempty"`
	Error   string        `json:"error,omitempty"`
	TTFT    time.Duration `json:"ttft"`
	Latency time.Duration `json:"latency"`
	// Score is the judge's grade of Text when Scored.
	Score  float64 `json:"score"`
	Scored bool    `json:"scored"`
}

// PromptResult is a suite prompt's two answers.
type PromptResult struct {
	Category string          `json:"category,omitempty"`
	Stable   PreflightAnswer `json:"stable"`
	Canary   PreflightAnswer `json:"canary"`
}

// WarmupResult is what the warm-up saw.
type WarmupResult struct {
	Requests int  `json:"requests"`
	Errors   int  `json:"errors"`
	Settled  bool `json:"settled"`
	// TTFTMedian is the median of the last Window TTFTs.
	TTFTMedian time.Duration `json:"ttft_median"`
	Took       time.Duration `json:"took"`
}

// PreflightVerdict is the pre-flight's outcome: proceed, rollback or
// pause, why, and the evidence.
type PreflightVerdict struct {
	Action Action         `json:"action"`
	Code   Code           `json:"code"`
	Reason string         `json:"reason"`
	Warmup WarmupResult   `json:"warmup"`
	Gates  PreflightGates `json:"gates"`
	// Prompts were sent; Judged pairs have both scores (a failed canary
	// answer scores 0, a pair whose stable answer failed is not judged).
	Prompts      int     `json:"prompts"`
	Judged       int     `json:"judged"`
	Wins         int     `json:"wins"`
	Losses       int     `json:"losses"`
	Ties         int     `json:"ties"`
	NetLossShare float64 `json:"net_loss_share"`
	// SignP is the sign test's p-value of "the canary loses at most half
	// of the decided pairs", for information: the gate is NetLossShare.
	SignP        float64 `json:"sign_p"`
	CanaryErrors int     `json:"canary_errors"`
	StableErrors int     `json:"stable_errors"`
	// NetLossShare and LatencyRatio are 0 without pairs to compute them.
	// LatencyRatio is the geometric mean of canary over stable total
	// latency over LatencyPairs pairs where both answered.
	LatencyRatio float64 `json:"latency_ratio"`
	LatencyPairs int     `json:"latency_pairs"`
	// Categories breaks the judged pairs down by suite category.
	Categories map[string]CategoryTally `json:"categories,omitempty"`
}

// CategoryTally is one suite category's verdicts.
type CategoryTally struct {
	Wins   int `json:"wins"`
	Losses int `json:"losses"`
	Ties   int `json:"ties"`
	Errors int `json:"canary_errors"`
}

// CodePreflightPassed marks a pre-flight stage that passed; a failed one
// rolls back with CodeHarm.
const CodePreflightPassed Code = "preflight_passed"

// GatePreflight decides a finished pre-flight. It is pure. The canary
// fails (rollback) when its warm-up did not settle, when more of its
// requests failed than MaxErrors, when its net loss share of the judged
// pairs exceeds MaxNetLossShare or when its latency ratio exceeds
// MaxLatencyRatio; every failed gate is named. A suite pair with both
// answers but no score (the judge failed) leaves it inconclusive:
// pause for a human, never pass. Otherwise it passes (proceed).
func GatePreflight(g PreflightGates, warm WarmupResult, results []PromptResult, alpha float64) PreflightVerdict {
	v := PreflightVerdict{Warmup: warm, Gates: g, Prompts: len(results), SignP: 1}
	v.CanaryErrors = warm.Errors
	unscored := 0
	var logSum float64
	for _, r := range results {
		c := v.Categories[r.Category]
		if r.Canary.Failed {
			v.CanaryErrors++
			c.Errors++
		}
		if r.Stable.Failed {
			v.StableErrors++
		}
		if !r.Canary.Failed && !r.Stable.Failed && r.Canary.Latency > 0 && r.Stable.Latency > 0 {
			logSum += math.Log(float64(r.Canary.Latency) / float64(r.Stable.Latency))
			v.LatencyPairs++
		}
		if !r.Stable.Failed {
			cs, ok := r.Canary.Score, r.Canary.Scored || r.Canary.Failed
			if r.Canary.Failed {
				cs = 0
			}
			switch {
			case !r.Stable.Scored || !ok:
				unscored++
			case cs > r.Stable.Score:
				v.Wins++
				c.Wins++
			case cs < r.Stable.Score:
				v.Losses++
				c.Losses++
			default:
				v.Ties++
				c.Ties++
			}
		}
		if v.Categories == nil {
			v.Categories = map[string]CategoryTally{}
		}
		v.Categories[r.Category] = c
	}
	v.Judged = v.Wins + v.Losses + v.Ties
	if v.Judged > 0 {
		v.NetLossShare = float64(v.Losses-v.Wins) / float64(v.Judged)
	}
	if s, err := stats.SignTest(v.Wins, v.Losses, v.Ties, alpha); err == nil {
		v.SignP = s.PValue
	}
	if v.LatencyPairs > 0 {
		v.LatencyRatio = math.Exp(logSum / float64(v.LatencyPairs))
	}
	evidence := fmt.Sprintf("warm-up %d requests (%d failed), TTFT median %v, %s; suite %d prompts, %d judged pairs: canary won %d, lost %d, %d ties (net loss share %s, sign test p %.3g); canary errors %d, stable errors %d; latency ratio %s over %d pairs",
		warm.Requests, warm.Errors, warm.TTFTMedian.Round(time.Millisecond), map[bool]string{true: "settled", false: "not settled"}[warm.Settled],
		v.Prompts, v.Judged, v.Wins, v.Losses, v.Ties, pctIf(v.NetLossShare, v.Judged > 0), v.SignP, v.CanaryErrors, v.StableErrors, ratio(v.LatencyRatio, v.LatencyPairs > 0), v.LatencyPairs)
	var failed []string
	if !warm.Settled {
		failed = append(failed, fmt.Sprintf("the canary's TTFT did not settle in %d warm-up requests (%v)", warm.Requests, warm.Took.Round(time.Millisecond)))
	}
	if v.CanaryErrors > g.MaxErrors {
		failed = append(failed, fmt.Sprintf("%d of the canary's requests failed (at most %d allowed)", v.CanaryErrors, g.MaxErrors))
	}
	if v.Judged > 0 && v.NetLossShare > g.MaxNetLossShare {
		failed = append(failed, fmt.Sprintf("the canary lost %d and won %d of %d judged pairs: net loss share %s over %s", v.Losses, v.Wins, v.Judged, pct(v.NetLossShare), pct(g.MaxNetLossShare)))
	}
	if v.LatencyPairs > 0 && v.LatencyRatio > g.MaxLatencyRatio {
		failed = append(failed, fmt.Sprintf("the canary's latency is %s stable's on the same prompts (at most %s)", ratio(v.LatencyRatio, true), ratio(g.MaxLatencyRatio, true)))
	}
	switch {
	case len(failed) > 0:
		v.Action, v.Code = ActionRollback, CodeHarm
		v.Reason = "rollback: the pre-flight failed: " + strings.Join(failed, "; ") + "; " + evidence
	case unscored > 0:
		v.Action, v.Code = ActionPause, CodeInconclusive
		v.Reason = fmt.Sprintf("pause: %d suite pairs could not be judged; %s", unscored, evidence)
	default:
		v.Action, v.Code = ActionProceed, CodePreflightPassed
		v.Reason = "pre-flight passed: " + evidence
	}
	return v
}

func pctIf(x float64, ok bool) string {
	if !ok {
		return "n/a"
	}
	return pct(x)
}
