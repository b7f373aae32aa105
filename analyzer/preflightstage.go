package analyzer

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/xds"
)

// PreflightStage is a rollout's pre-flight stage as it runs: before any
// user stage (and before a shadow stage), the canary gets only forced
// requests from the analyzer (warm-up, then the suite, also sent to
// stable) and GatePreflight decides on them.
type PreflightStage struct {
	Policy PreflightPolicy `json:"policy"`
	// Status is running, passed, failed (rolled back) or ended (the
	// rollout ended otherwise: an operator's action).
	Status   string            `json:"status"`
	Started  time.Time         `json:"started"`
	Ended    time.Time         `json:"ended,omitzero"`
	Progress PreflightProgress `json:"progress"`
	// Verdict is the gates' decision once the requests are done.
	Verdict *PreflightVerdict `json:"verdict,omitempty"`
}

// PreflightProgress is how far a running pre-flight is.
type PreflightProgress struct {
	// Phase is warmup, suite or done.
	Phase      string        `json:"phase"`
	Warmup     int           `json:"warmup_requests"`
	TTFTMedian time.Duration `json:"ttft_median"`
	SuiteDone  int           `json:"suite_done"`
	SuiteTotal int           `json:"suite_total"`
}

// Pre-flight statuses and phases.
const (
	PreflightRunning = "running"
	PreflightPassed  = "passed"
	PreflightFailed  = "failed"
	PreflightEnded   = "ended"

	PhaseWarmup = "warmup"
	PhaseSuite  = "suite"
	PhaseDone   = "done"
)

// Running reports whether the pre-flight owns the rollout's looks.
func (s *PreflightStage) Running() bool { return s != nil && s.Status == PreflightRunning }

func (s *PreflightStage) end(status string, at time.Time) {
	if s.Running() {
		s.Status, s.Ended = status, at
	}
}

// PairJudge grades one answer to a suite prompt in [0, 1], given the
// prompt's reference answer or rubric if it has one (quality.Judge).
type PairJudge interface {
	GradeAnswer(ctx context.Context, prompt, reference, rubric, answer string) (float64, error)
}

// PreflightGateway sends the pre-flight's forced requests through the
// gateway: streamed chat completions with x-llmcanary-force and the
// operator key, so they are routed to the named version and labelled
// forced (left out of the user statistics).
type PreflightGateway struct {
	// URL is the gateway's base URL, e.g. http://127.0.0.1:10000.
	URL string
	// ForceKey is a key of the wasm filter's force keys file.
	ForceKey string
	// HTTP sends the requests; default http.DefaultClient (each request
	// is bounded by the policy's RequestTimeout).
	HTTP *http.Client
}

// Send sends prompt to version of model with the request id id and
// times its answer: TTFT to the first content token, Latency to the end
// of the stream. Any failure (transport, status, a stream without its
// end, another version answering) is a failed answer, not an error.
func (g PreflightGateway) Send(ctx context.Context, model, version, id, prompt string) PreflightAnswer {
	fail := func(format string, a ...any) PreflightAnswer {
		return PreflightAnswer{Failed: true, Error: fmt.Sprintf(format, a...)}
	}
	body, err := json.Marshal(map[string]any{
		"model": model, "stream": true, "user": preflightUser,
		"messages": []map[string]string{{"role": "user", "content": prompt}},
	})
	if err != nil {
		return fail("%v", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(g.URL, "/")+"/v1/chat/completions", bytes.NewReader(body))
	if err != nil {
		return fail("%v", err)
	}
	req.Header.Set("content-type", "application/json")
	req.Header.Set(wire.HeaderForce, version)
	req.Header.Set(wire.HeaderKey, g.ForceKey)
	req.Header.Set(wire.HeaderRequestID, id)
	req.Header.Set(wire.HeaderUserID, preflightUser)
	hc := g.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	start := time.Now()
	resp, err := hc.Do(req)
	if err != nil {
		return fail("%v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fail("status %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	if v := resp.Header.Get(wire.HeaderVersion); v != version {
		return fail("answered by version %q, not %q: is the force key valid?", v, version)
	}
	var a PreflightAnswer
	var text strings.Builder
	done := false
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data:")
		if !ok {
			continue
		}
		data = strings.TrimSpace(data)
		if data == "[DONE]" {
			done = true
			break
		}
		var chunk struct {
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
			Error json.RawMessage `json:"error"`
		}
		if err := json.Unmarshal([]byte(data), &chunk); err != nil {
			return fail("stream chunk is not JSON: %v", err)
		}
		if len(chunk.Error) > 0 {
			return fail("error in the stream: %s", chunk.Error)
		}
		for _, c := range chunk.Choices {
			if c.Delta.Content != "" && a.TTFT == 0 {
				a.TTFT = time.Since(start)
			}
			text.WriteString(c.Delta.Content)
		}
	}
	if err := sc.Err(); err != nil {
		return fail("read stream: %v", err)
	}
	if !done {
		return fail("the stream ended without [DONE]")
	}
	a.Latency = time.Since(start)
	// Read the response to its end: closing it after [DONE] but before
	// the last chunk would cut the stream, and the gateway would record
	// the request as cancelled.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if a.TTFT == 0 {
		a.TTFT = a.Latency
	}
	a.Text = text.String()
	return a
}

// preflightUser is the identity of pre-flight requests.
const preflightUser = "llmcanary-preflight"

// preflightRun is one term's pre-flight of a rollout, run in its own
// goroutine; the runner's looks read its progress and, once done, its
// verdict.
type preflightRun struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	progress PreflightProgress
	verdict  PreflightVerdict
}

func (p *preflightRun) setProgress(f func(*PreflightProgress)) {
	p.mu.Lock()
	f(&p.progress)
	p.mu.Unlock()
}

func (p *preflightRun) snapshot() PreflightProgress {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.progress
}

// preflight returns the rollout's pre-flight run of this process,
// starting it if there is none. ctx bounds it: the runner's term.
func (r *Runner) preflight(ctx context.Context, ro *Rollout) *preflightRun {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p, ok := r.preflights[ro.ID]; ok {
		return p
	}
	if r.preflights == nil {
		r.preflights = map[string]*preflightRun{}
	}
	pctx, cancel := context.WithCancel(ctx)
	p := &preflightRun{cancel: cancel, done: make(chan struct{})}
	r.preflights[ro.ID] = p
	pol := ro.Preflight.Policy
	alpha := ro.Plan.Policy.Alpha
	go func() {
		defer close(p.done)
		defer cancel()
		warm := runWarmup(pctx, *r.Gateway, ro, pol, p)
		results := runSuite(pctx, *r.Gateway, r.Judge, ro, pol, p)
		p.setProgress(func(pr *PreflightProgress) { pr.Phase = PhaseDone })
		v := GatePreflight(pol.Gates, warm, results, alpha)
		if pctx.Err() != nil {
			v = PreflightVerdict{Action: ActionHold, Code: CodeUndecided, Reason: "hold: the pre-flight was interrupted; it starts again at the next look"}
		}
		p.mu.Lock()
		p.verdict = v
		p.mu.Unlock()
	}()
	return p
}

// forgetPreflight stops and forgets the rollout's pre-flight run.
func (r *Runner) forgetPreflight(id string) {
	r.mu.Lock()
	p := r.preflights[id]
	delete(r.preflights, id)
	r.mu.Unlock()
	if p != nil {
		p.cancel()
	}
}

func preflightID(ro *Rollout, phase string, n int, version string) string {
	return fmt.Sprintf("%s%s:%s:%d:%s", PreflightIDPrefix, ro.ID, phase, n, version)
}

// runWarmup sends forced requests to the canary, one at a time, until its
// TTFT settles or a bound is reached. Failed requests count as errors and
// add no TTFT.
func runWarmup(ctx context.Context, g PreflightGateway, ro *Rollout, pol PreflightPolicy, p *preflightRun) WarmupResult {
	w := pol.Warmup
	start := time.Now()
	var res WarmupResult
	var ttfts []time.Duration
	prompts := []string{"Say hello.", "Count from one to five.", "Name a colour."}
	for i := range pol.Suite {
		prompts = append(prompts, pol.Suite[i].Prompt)
	}
	p.setProgress(func(pr *PreflightProgress) { pr.Phase = PhaseWarmup })
	for res.Requests < w.MaxRequests && time.Since(start) < w.MaxDuration.D() && ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(ctx, pol.RequestTimeout.D())
		a := g.Send(rctx, ro.Model, ro.Canary, preflightID(ro, PhaseWarmup, res.Requests, ro.Canary), prompts[res.Requests%len(prompts)])
		cancel()
		res.Requests++
		if a.Failed {
			res.Errors++
		} else {
			ttfts = append(ttfts, a.TTFT)
		}
		res.Settled, res.TTFTMedian = WarmupSettled(ttfts, w.Window, w.Tolerance)
		p.setProgress(func(pr *PreflightProgress) { pr.Warmup, pr.TTFTMedian = res.Requests, res.TTFTMedian })
		if res.Settled {
			break
		}
	}
	res.Took = time.Since(start)
	return res
}

// runSuite sends every suite prompt to both versions and grades both
// answers, Concurrency prompts at a time. A failed canary answer is not
// graded (it scores 0 in the gates); a failed grading leaves the answer
// unscored.
func runSuite(ctx context.Context, g PreflightGateway, j PairJudge, ro *Rollout, pol PreflightPolicy, p *preflightRun) []PromptResult {
	out := make([]PromptResult, len(pol.Suite))
	p.setProgress(func(pr *PreflightProgress) { pr.Phase, pr.SuiteTotal = PhaseSuite, len(pol.Suite) })
	sem := make(chan struct{}, pol.Concurrency)
	var wg sync.WaitGroup
	for i, sp := range pol.Suite {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			res := PromptResult{Category: sp.Category}
			send := func(version string) PreflightAnswer {
				rctx, cancel := context.WithTimeout(ctx, pol.RequestTimeout.D())
				defer cancel()
				a := g.Send(rctx, ro.Model, version, preflightID(ro, PhaseSuite, i, version), sp.Prompt)
				if !a.Failed && j != nil {
					if s, err := j.GradeAnswer(rctx, sp.Prompt, sp.Reference, sp.Rubric, a.Text); err == nil {
						a.Score, a.Scored = s, true
					} else {
						a.Error = "not graded: " + err.Error()
					}
				}
				return a
			}
			res.Stable, res.Canary = send(ro.Stable), send(ro.Canary)
			out[i] = res
			p.setProgress(func(pr *PreflightProgress) { pr.SuiteDone++ })
		})
	}
	wg.Wait()
	return out
}

// stepPreflight takes one look at a rollout in its pre-flight stage: it
// starts the pre-flight in this term if it is not running, records its
// progress while it runs and, once it is done, acts on its verdict. A
// failure rolls back with every user still on stable; a pass moves the
// first user stage's traffic (or starts the shadow stage, if the rollout
// has one), whose window opens then.
func (r *Runner) stepPreflight(ctx context.Context, ro *Rollout, now time.Time) (*Rollout, error) {
	if r.Gateway == nil {
		err := errors.New("no gateway for pre-flight requests")
		return r.recordError(ro, now, CodeQueryFailed, "hold: the analyzer has no gateway URL and force key to send the pre-flight's requests with", err)
	}
	run := r.preflight(ctx, ro)
	select {
	case <-run.done:
	default:
		pr := run.snapshot()
		if pr == ro.Preflight.Progress {
			return ro, nil
		}
		return r.Store.Update(ro.ID, func(x *Rollout) error {
			if x.Preflight.Running() {
				x.Preflight.Progress, x.Updated = pr, now
			}
			return nil
		})
	}
	r.forgetPreflight(ro.ID)
	v := run.verdict
	pr := run.snapshot()
	if v.Action == ActionHold {
		return ro, nil
	}
	dec := &Decision{At: now, Action: v.Action, Code: v.Code, Reason: v.Reason, Alpha: ro.Plan.Policy.Alpha, InStage: now.Sub(ro.Preflight.Started)}
	started := now
	if v.Action == ActionProceed {
		if ro.Shadow != nil {
			if err := r.setShadow(ctx, ro.Model, ro.Shadow.Policy.Mirror(ro.Canary)); err != nil {
				return r.recordError(ro, now, CodeTrafficFailed, fmt.Sprintf("pre-flight passed but requests could not be mirrored to %s: %v; the pre-flight runs again at the next look", ro.Canary, err), err)
			}
		} else {
			w := ro.Plan.Policy.EvaluatedStages()[0].Weight
			if err := r.setWeights(ctx, ro.Model, ro.Weights(w), ro.Stable, xds.Cause{Rollout: ro.ID, Reason: v.Reason}); err != nil {
				r.setSynced(ro.ID, false)
				return r.recordError(ro, now, CodeTrafficFailed, fmt.Sprintf("pre-flight passed but the control plane did not accept canary %g %%: %v; the pre-flight runs again at the next look", w, err), err)
			}
		}
		started = r.waitApplied(ctx, ro.ID, now)
	}
	return r.update(ro, func(x *Rollout) {
		x.Preflight.Verdict, x.Preflight.Progress = &v, pr
		x.Last, x.Updated, x.LastError = dec, now, ""
		x.record(Event{At: now, Kind: "decision", Action: v.Action, Code: v.Code, Reason: v.Reason, Decision: dec})
		switch v.Action {
		case ActionRollback:
			x.Preflight.end(PreflightFailed, now)
			x.Status = RolloutRolledBack
			x.Shadow.end(ShadowEnded, now)
			x.record(Event{At: now, Kind: "action", Action: ActionRollback, Reason: fmt.Sprintf("traffic: %s 100 %%, %s 0 %% (no user was served by it)", x.Stable, x.Canary)})
		case ActionProceed:
			x.Preflight.end(PreflightPassed, started)
			if x.Shadow != nil {
				x.Shadow.Started = started
				x.record(Event{At: started, Kind: "action", Action: ActionProceed, Reason: fmt.Sprintf("shadow stage: %g %% of user requests mirrored to %s", x.Shadow.Policy.Percent, x.Canary)})
			} else {
				x.record(Event{At: started, Kind: "action", Action: ActionProceed, Reason: fmt.Sprintf("first user stage: %s %g %%, %s %g %%", x.Stable, 100-x.CanaryWeight(), x.Canary, x.CanaryWeight())})
			}
			x.StageStarted, x.State = started, NewStageState(0, started)
		case ActionPause:
			x.Status = RolloutPaused
		}
	})
}

// newPreflightStage validates a start request's pre-flight policy and
// returns the running stage.
func newPreflightStage(p PreflightPolicy, mode Mode, now time.Time) (*PreflightStage, error) {
	if mode != ModeCanary {
		return nil, fmt.Errorf("%w: a pre-flight stage runs before a canary rollout's user stages, not in mode %s", ErrInvalid, mode)
	}
	p = p.WithDefaults()
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return &PreflightStage{Policy: p, Status: PreflightRunning, Started: now,
		Progress: PreflightProgress{Phase: PhaseWarmup, SuiteTotal: len(p.Suite)}}, nil
}

// planPreflight gives the rollout its pre-flight stage: the requested
// one, or by default one without a suite for high and critical risk when
// the analyzer has a gateway to send it through. It returns the sentence
// the start event carries about it.
func (r *Runner) planPreflight(ro *Rollout, req StartRequest, now time.Time) (string, error) {
	p := req.Preflight
	switch {
	case p != nil && req.NoPreflight:
		return "", fmt.Errorf("%w: preflight and no_preflight are both set", ErrInvalid)
	case p != nil && r.Gateway == nil:
		return "", fmt.Errorf("%w: a pre-flight needs the analyzer's gateway URL and force key (--gateway-url, --force-key-file)", ErrInvalid)
	case p == nil && !req.NoPreflight && req.Mode == ModeCanary && (ro.Plan.Risk == RiskHigh || ro.Plan.Risk == RiskCritical):
		if r.Gateway == nil {
			return fmt.Sprintf("; no pre-flight despite %s risk: the analyzer has no gateway URL and force key", ro.Plan.Risk), nil
		}
		p = &PreflightPolicy{}
	case p == nil:
		return "", nil
	}
	var err error
	if ro.Preflight, err = newPreflightStage(*p, req.Mode, now); err != nil {
		return "", err
	}
	pp := ro.Preflight.Policy
	return fmt.Sprintf("; pre-flight first: warm-up of %s until the median TTFT of its last %d requests is within %.0f %% of the %d before (at most %d requests, %v), then %d suite prompts to both versions; gates: net loss share ≤ %s, canary errors ≤ %d, latency ratio ≤ %s",
		ro.Canary, pp.Warmup.Window, 100*pp.Warmup.Tolerance, pp.Warmup.Window, pp.Warmup.MaxRequests, pp.Warmup.MaxDuration.D(), len(pp.Suite),
		pct(pp.Gates.MaxNetLossShare), pp.Gates.MaxErrors, ratio(pp.Gates.MaxLatencyRatio, true)), nil
}
