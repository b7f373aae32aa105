// Package notify tells people and systems what rollouts do: a webhook call
// for every decision and every change of a rollout's state, as generic
// JSON signed with HMAC-SHA256 or as a Slack-compatible message. Delivery
// is retried with backoff from a bounded queue per webhook, so a slow or
// absent receiver never delays a decision.
package notify

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/llmcanary/llmcanary/analyzer"
)

// Message is the generic JSON body of one notification: the event that
// happened and the rollout as it stands after it.
type Message struct {
	// ID identifies the notification (the rollout id, the event's time
	// and kind): a retried delivery carries the same id, so a receiver
	// can drop duplicates.
	ID string `json:"id"`
	// Type is the event's kind: decision, action (traffic moved),
	// operator (a human's action) or error; state_change when the
	// rollout's status changed without an event of its own.
	Type string    `json:"type"`
	At   time.Time `json:"at"`
	// Action, Code and Reason are the event's: what was decided or done,
	// its machine code and its sentence.
	Action  analyzer.Action `json:"action,omitempty"`
	Code    analyzer.Code   `json:"code,omitempty"`
	Reason  string          `json:"reason"`
	Actor   string          `json:"actor,omitempty"`
	Rollout RolloutSummary  `json:"rollout"`
	// StatusChanged is set when this change moved the rollout's status
	// (running, paused, promoted, rolled_back, aborted); PreviousStatus is
	// then the status before it.
	StatusChanged  bool            `json:"status_changed"`
	PreviousStatus analyzer.Status `json:"previous_status,omitempty"`
	// Metrics are the decision's per-metric numbers, when the event is a
	// decision that tested metrics.
	Metrics []MetricSummary `json:"metrics,omitempty"`
}

// RolloutSummary is the rollout a message is about.
type RolloutSummary struct {
	ID     string          `json:"id"`
	Model  string          `json:"model"`
	Stable string          `json:"stable"`
	Canary string          `json:"canary"`
	Mode   analyzer.Mode   `json:"mode"`
	Status analyzer.Status `json:"status"`
	// Stage is 1-based, of Stages evaluated stages.
	Stage  int `json:"stage"`
	Stages int `json:"stages"`
	// Weight is the canary's share of traffic, in percent.
	Weight float64 `json:"weight"`
}

// MetricSummary is one metric of a decision: its status, the effect
// (canary against stable, in the metric's kind) and its always-valid
// interval.
type MetricSummary struct {
	Metric    analyzer.Metric       `json:"metric"`
	Kind      analyzer.Kind         `json:"kind"`
	Status    analyzer.MetricStatus `json:"status"`
	Estimate  float64               `json:"estimate"`
	Lower     *float64              `json:"lower,omitempty"`
	Upper     *float64              `json:"upper,omitempty"`
	Tolerance float64               `json:"tolerance"`
}

// Messages returns the notifications a persisted change of a rollout
// makes (before is nil for a new rollout): one per new event in its
// history, and a state_change when the status moved without one. A hold
// folded into the previous entry (the same hold again) makes none. Pure.
func Messages(before, after *analyzer.Rollout) []Message {
	if after == nil {
		return nil
	}
	events := analyzer.NewEvents(before, after)
	var prev analyzer.Status
	if before != nil {
		prev = before.Status
	}
	changed := before == nil || before.Status != after.Status
	out := make([]Message, 0, len(events)+1)
	for _, e := range events {
		m := Message{
			ID: messageID(after.ID, e.At, e.Kind), Type: e.Kind, At: e.At,
			Action: e.Action, Code: e.Code, Reason: e.Reason, Actor: e.Actor,
			Rollout: summary(after), StatusChanged: changed, PreviousStatus: prev,
		}
		if e.Decision != nil {
			m.Metrics = metricSummaries(e.Decision.Metrics)
		}
		out = append(out, m)
	}
	if len(out) == 0 && changed {
		at := after.Updated
		out = append(out, Message{
			ID: messageID(after.ID, at, "state_change"), Type: "state_change", At: at,
			Reason:  fmt.Sprintf("rollout %s is %s", after.ID, after.Status),
			Rollout: summary(after), StatusChanged: true, PreviousStatus: prev,
		})
	}
	return out
}

func messageID(rollout string, at time.Time, kind string) string {
	return fmt.Sprintf("%s/%d/%s", rollout, at.UnixNano(), kind)
}

func summary(r *analyzer.Rollout) RolloutSummary {
	return RolloutSummary{
		ID: r.ID, Model: r.Model, Stable: r.Stable, Canary: r.Canary, Mode: r.Mode, Status: r.Status,
		Stage: r.Stage + 1, Stages: len(r.Plan.Policy.EvaluatedStages()), Weight: r.CanaryWeight(),
	}
}

// finite maps NaN and infinities, which JSON cannot carry, to 0.
func finite(v float64) float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0
	}
	return v
}

func metricSummaries(ms []analyzer.MetricResult) []MetricSummary {
	if len(ms) == 0 {
		return nil
	}
	out := make([]MetricSummary, len(ms))
	for i, m := range ms {
		out[i] = MetricSummary{Metric: m.Metric, Kind: m.Kind, Status: m.Status, Estimate: finite(m.Estimate), Tolerance: m.Tolerance}
		// JSON has no infinity: an interval that does not bound a side
		// yet leaves that side out.
		if m.CI != nil && !math.IsInf(m.CI.Lo, 0) && !math.IsNaN(m.CI.Lo) {
			lo := m.CI.Lo
			out[i].Lower = &lo
		}
		if m.CI != nil && !math.IsInf(m.CI.Hi, 0) && !math.IsNaN(m.CI.Hi) {
			hi := m.CI.Hi
			out[i].Upper = &hi
		}
	}
	return out
}

// SlackMessage is the body Slack's incoming webhooks (and the chat tools
// that copy them: Mattermost, Rocket.Chat, Discord's /slack endpoint)
// accept: a plain-text fallback and Block Kit blocks.
type SlackMessage struct {
	Text   string       `json:"text"`
	Blocks []SlackBlock `json:"blocks"`
}

// SlackBlock is one Block Kit block (section or context).
type SlackBlock struct {
	Type     string      `json:"type"`
	Text     *SlackText  `json:"text,omitempty"`
	Elements []SlackText `json:"elements,omitempty"`
}

// SlackText is a Block Kit text object.
type SlackText struct {
	Type string `json:"type"` // mrkdwn
	Text string `json:"text"`
}

// Slack renders m for a chat channel: a headline a phone notification
// shows whole, the sentence, and the metrics that decided.
func Slack(m Message) SlackMessage {
	r := m.Rollout
	head := fmt.Sprintf("%s %s: %s → %s %s", icon(m), r.Model, r.Stable, r.Canary, headline(m))
	var detail strings.Builder
	fmt.Fprintf(&detail, "*%s*\n%s", slackEscape(head), slackEscape(m.Reason))
	if len(m.Metrics) > 0 {
		detail.WriteString("\n")
		for _, x := range m.Metrics {
			fmt.Fprintf(&detail, "\n• `%s` %s, effect %+.4f", x.Metric, x.Status, x.Estimate)
			if x.Lower != nil && x.Upper != nil {
				fmt.Fprintf(&detail, " [%+.4f, %+.4f]", *x.Lower, *x.Upper)
			}
			fmt.Fprintf(&detail, " (tolerance %g)", x.Tolerance)
		}
	}
	ctx := fmt.Sprintf("rollout `%s` · %s · stage %d/%d · canary %g %% · %s",
		r.ID, r.Status, r.Stage, r.Stages, r.Weight, m.At.UTC().Format(time.RFC3339))
	if m.Actor != "" {
		ctx += " · by " + slackEscape(m.Actor)
	}
	return SlackMessage{
		Text: head + ": " + m.Reason,
		Blocks: []SlackBlock{
			{Type: "section", Text: &SlackText{Type: "mrkdwn", Text: detail.String()}},
			{Type: "context", Elements: []SlackText{{Type: "mrkdwn", Text: ctx}}},
		},
	}
}

func headline(m Message) string {
	switch {
	case m.StatusChanged && m.PreviousStatus == "":
		return "rollout started"
	case m.StatusChanged:
		return fmt.Sprintf("%s (was %s)", strings.ReplaceAll(string(m.Rollout.Status), "_", " "), m.PreviousStatus)
	case m.Type == "decision":
		return "decided " + string(m.Action)
	case m.Type == "action":
		return "traffic moved"
	}
	return m.Type
}

func icon(m Message) string {
	switch {
	case m.Rollout.Status == analyzer.RolloutRolledBack || m.Action == analyzer.ActionRollback:
		return ":rotating_light:"
	case m.Rollout.Status == analyzer.RolloutPromoted:
		return ":white_check_mark:"
	case m.Rollout.Status == analyzer.RolloutPaused || m.Action == analyzer.ActionPause:
		return ":double_vertical_bar:"
	case m.Type == "error":
		return ":warning:"
	}
	return ":information_source:"
}

// slackEscape escapes the three characters Slack's mrkdwn reserves.
func slackEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}
