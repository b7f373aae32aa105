package main

import (
	"context"
	"fmt"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/internal/wire"
)

// The demo's stages before any user: a pre-flight (warm-up, then a prompt
// suite sent forced to both versions and judged in pairs) and a shadow
// stage (a share of stable's user requests mirrored to the canary, both
// answers judged on the same prompt).
const (
	demoSuitePrompts = 40
	demoShadowShare  = 25 // percent of user requests mirrored
	demoShadowPairs  = 120
)

// demoStart is the start request of a demo rollout of canary.
func demoStart(model, canary string) analyzer.StartRequest {
	return analyzer.StartRequest{Model: model, Canary: canary, Actor: "demo",
		// A 40-prompt suite is a smoke test for gross regressions: the
		// pools fail 0.5 % of requests, so some 60 canary requests may fail
		// twice, and with 3 to 4 % bad answers per version a healthy canary
		// loses a few pairs by chance, so the net loss may reach 20 % (8
		// pairs); the shadow and user stages measure finer.
		Preflight: &analyzer.PreflightPolicy{Suite: demoSuite(demoSuitePrompts), Gates: analyzer.PreflightGates{MaxErrors: 2, MaxNetLossShare: 0.2}},
		Shadow:    &analyzer.ShadowPolicy{Percent: demoShadowShare, MinPairs: demoShadowPairs}}
}

// demoSuite is a curated prompt suite of n prompts over four categories.
func demoSuite(n int) []analyzer.SuitePrompt {
	topics := []struct{ category, prompt string }{
		{"reasoning", "A train leaves at %d:00 and travels for 3 hours; when does it arrive?"},
		{"summarise", "Summarise section %d of the release notes in two sentences."},
		{"code", "Write a function that returns the %dth Fibonacci number."},
		{"chat", "Suggest a name for a team offsite, idea number %d."},
	}
	out := make([]analyzer.SuitePrompt, n)
	for i := range out {
		t := topics[i%len(topics)]
		out[i] = analyzer.SuitePrompt{Category: t.category, Prompt: fmt.Sprintf(t.prompt, i+1)}
	}
	return out
}

// beforeUsersProgress is a progress line while the rollout is in its
// pre-flight or shadow stage, else "".
func beforeUsersProgress(ro *analyzer.Rollout) string {
	switch {
	case ro.Preflight.Running():
		pp := ro.Preflight.Progress
		if pp.Phase == analyzer.PhaseWarmup || pp.Phase == "" {
			return fmt.Sprintf("pre-flight: warming %s up, %d forced requests, TTFT median %v", ro.Canary, pp.Warmup, pp.TTFTMedian.Round(100_000))
		}
		return fmt.Sprintf("pre-flight: prompt suite %s %d/%d prompts sent to both versions, then judged in pairs",
			bar(ratio(float64(pp.SuiteDone), float64(max(pp.SuiteTotal, 1)))), pp.SuiteDone, pp.SuiteTotal)
	case ro.Shadow.Running():
		line := fmt.Sprintf("shadow: %g %% of user requests mirrored to %s (users see only stable's answers)", ro.Shadow.Policy.Percent, ro.Canary)
		if l := ro.Shadow.Last; l != nil {
			pr := l.Pairs
			line += fmt.Sprintf("  %s %d/%d judged pairs: canary won %d, lost %d, tied %d",
				bar(ratio(float64(pr.Wins+pr.Losses+pr.Ties), float64(max(ro.Shadow.Policy.MinPairs, 1)))),
				pr.Wins+pr.Losses+pr.Ties, ro.Shadow.Policy.MinPairs, pr.Wins, pr.Losses, pr.Ties)
		}
		return line
	}
	return ""
}

// beforeUsers summarises how the rollout's pre-flight and shadow stages
// ended.
func beforeUsers(ro *analyzer.Rollout) []string {
	var out []string
	if pf := ro.Preflight; pf != nil {
		line := "pre-flight " + pf.Status
		if v := pf.Verdict; v != nil {
			line += fmt.Sprintf(": %d suite prompts, %d pairs judged (canary won %d, lost %d, tied %d; net loss share %.3f), canary errors %d, latency ratio %.2f",
				v.Prompts, v.Judged, v.Wins, v.Losses, v.Ties, v.NetLossShare, v.CanaryErrors, v.LatencyRatio)
		}
		out = append(out, line)
	}
	if sh := ro.Shadow; sh != nil {
		line := "shadow stage " + sh.Status
		if l := sh.Last; l != nil {
			pr := l.Pairs
			line += fmt.Sprintf(": %d mirrored, %d judged pairs (canary won %d, lost %d, tied %d), latency ratio %.2f — %s",
				pr.Mirrored, pr.Wins+pr.Losses+pr.Ties, pr.Wins, pr.Losses, pr.Ties, l.Latency.Estimate, l.Reason)
		}
		out = append(out, line)
	}
	return out
}

// canaryUserRequests counts the user requests (neither forced nor in a
// cohort) the rollout's canary answered, from ClickHouse.
func canaryUserRequests(ctx context.Context, s *upStack, ro *analyzer.Rollout) (uint64, error) {
	conn, err := s.ClickHouse.Conn(ctx)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	var n uint64
	err = conn.QueryRow(ctx, fmt.Sprintf("SELECT count() FROM %s.%s WHERE model = ? AND version = ? AND forced = 0 AND cohort = ''",
		wire.Database, wire.TableRequestLog), ro.Model, ro.Canary).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("user requests of %s: %w", ro.Canary, err)
	}
	return n, nil
}
