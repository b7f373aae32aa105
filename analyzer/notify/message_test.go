package notify

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/analyzer/stats"
)

var t0 = time.Date(2026, 3, 1, 3, 0, 0, 0, time.UTC)

func rollout(status analyzer.Status, events ...analyzer.Event) *analyzer.Rollout {
	p := analyzer.DefaultPolicy()
	return &analyzer.Rollout{ID: "r-1", Model: "llama", Stable: "v1", Canary: "v2", Mode: analyzer.ModeCanary,
		Plan: analyzer.Plan{Policy: p}, Status: status, Created: t0, Updated: t0, History: events}
}

func ev(sec int, kind string, a analyzer.Action, code analyzer.Code, repeats int) analyzer.Event {
	return analyzer.Event{At: t0.Add(time.Duration(sec) * time.Second), Kind: kind, Action: a, Code: code,
		Reason: string(a) + " " + string(code), Repeats: repeats}
}

func TestMessagesOnePerNewEventAndNoneForARepeatedHold(t *testing.T) {
	start := ev(0, "operator", "", analyzer.CodeOperator, 0)
	hold := ev(5, "decision", analyzer.ActionHold, analyzer.CodeMinSamples, 0)
	holdAgain := ev(6, "decision", analyzer.ActionHold, analyzer.CodeMinSamples, 1)
	rb := ev(9, "decision", analyzer.ActionRollback, analyzer.CodeHarm, 0)
	moved := ev(10, "action", analyzer.ActionRollback, "", 0)

	trimmedBefore := make([]analyzer.Event, analyzer.MaxHistory)
	for i := range trimmedBefore {
		trimmedBefore[i] = ev(i, "decision", analyzer.ActionHold, analyzer.Code("c"+string(rune('a'+i%2))), 0)
	}
	trimmedAfter := append(append([]analyzer.Event(nil), trimmedBefore[1:]...), ev(analyzer.MaxHistory, "operator", analyzer.Action("pause"), analyzer.CodeOperator, 0))

	cases := []struct {
		name          string
		before, after *analyzer.Rollout
		want          []string // type/action of each message
		changed       bool
	}{
		{"a new rollout tells that it started", nil, rollout(analyzer.RolloutRunning, start), []string{"operator/"}, true},
		{"a first hold is sent", rollout(analyzer.RolloutRunning, start), rollout(analyzer.RolloutRunning, start, hold), []string{"decision/hold"}, false},
		{"the same hold again is not", rollout(analyzer.RolloutRunning, start, hold), rollout(analyzer.RolloutRunning, start, holdAgain), nil, false},
		{"a rollback decided and done in one change gives two messages and the status change",
			rollout(analyzer.RolloutRunning, start, hold), rollout(analyzer.RolloutRolledBack, start, hold, rb, moved),
			[]string{"decision/rollback", "action/rollback"}, true},
		{"a status change without an event still tells", rollout(analyzer.RolloutRunning, start), rollout(analyzer.RolloutPaused, start), []string{"state_change/"}, true},
		{"a full history that dropped its oldest entry sends the new last one",
			rollout(analyzer.RolloutRunning, trimmedBefore...), rollout(analyzer.RolloutRunning, trimmedAfter...), []string{"operator/pause"}, false},
		{"nothing changed in the history sends nothing", rollout(analyzer.RolloutRunning, start), rollout(analyzer.RolloutRunning, start), nil, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := Messages(tc.before, tc.after)
			var kinds []string
			for _, m := range got {
				kinds = append(kinds, m.Type+"/"+string(m.Action))
				if m.StatusChanged != tc.changed {
					t.Errorf("%s: status_changed %v, want %v", m.Type, m.StatusChanged, tc.changed)
				}
				if m.Rollout.ID != "r-1" || m.Rollout.Model != "llama" || m.ID == "" || m.Reason == "" {
					t.Errorf("message lacks its rollout, id or reason: %+v", m)
				}
			}
			if strings.Join(kinds, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("messages %v, want %v", kinds, tc.want)
			}
		})
	}
}

func TestMessageCarriesTheDecisionsMetricsAndEncodesAnUnboundedInterval(t *testing.T) {
	d := &analyzer.Decision{Action: analyzer.ActionRollback, Metrics: []analyzer.MetricResult{
		{Metric: analyzer.MetricLatency, Kind: analyzer.KindRelative, Status: analyzer.StatusHarm, Estimate: 0.31, Tolerance: 0.2,
			CI: &stats.Interval{Lo: 0.22, Hi: math.Inf(1)}},
	}}
	e := ev(9, "decision", analyzer.ActionRollback, analyzer.CodeHarm, 0)
	e.Decision = d
	msgs := Messages(rollout(analyzer.RolloutRunning), rollout(analyzer.RolloutRunning, e))
	if len(msgs) != 1 || len(msgs[0].Metrics) != 1 {
		t.Fatalf("messages %+v", msgs)
	}
	b, err := json.Marshal(msgs[0])
	if err != nil {
		t.Fatalf("an infinite interval bound must still encode: %v", err)
	}
	if !strings.Contains(string(b), `"lower":0.22`) || strings.Contains(string(b), `"upper"`) {
		t.Fatalf("want the finite lower bound and no upper one: %s", b)
	}
}

func TestSlackMessageHeadlinesTheRollbackAndEscapesMarkup(t *testing.T) {
	m := Messages(rollout(analyzer.RolloutRunning), rollout(analyzer.RolloutRolledBack,
		analyzer.Event{At: t0, Kind: "decision", Action: analyzer.ActionRollback, Code: analyzer.CodeHarm, Reason: "rollback: latency <worse> & slower"}))[0]
	s := Slack(m)
	if !strings.Contains(s.Text, "llama: v1 → v2 rolled back (was running)") || !strings.HasPrefix(s.Text, ":rotating_light:") {
		t.Fatalf("text %q", s.Text)
	}
	if len(s.Blocks) != 2 || s.Blocks[0].Type != "section" || s.Blocks[1].Type != "context" {
		t.Fatalf("blocks %+v", s.Blocks)
	}
	if !strings.Contains(s.Blocks[0].Text.Text, "&lt;worse&gt; &amp; slower") {
		t.Fatalf("mrkdwn not escaped: %q", s.Blocks[0].Text.Text)
	}
}
