//go:build integration

package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/analyzer/chsource"
	"github.com/llmcanary/llmcanary/internal/etcdtest"
	"github.com/llmcanary/llmcanary/internal/health"
	"github.com/llmcanary/llmcanary/internal/httpapi"
	"github.com/llmcanary/llmcanary/internal/local"
	"github.com/llmcanary/llmcanary/internal/procs"
	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/xds"
)

// haLease is the leadership lease of the analyzers in these tests.
const haLease = 3 * time.Second

// isLeader reads llmcanary_analyzer_leader from the analyzer's /metrics.
func isLeader(ctx context.Context, a *procs.Analyzer) bool {
	ss, err := health.Scrape(ctx, http.DefaultClient, "http://"+a.Addr+"/metrics")
	if err != nil {
		return false
	}
	v, ok := ss.Sum("llmcanary_analyzer_leader")
	return ok && v == 1
}

// waitLeader waits until a reports leading and returns how long it took.
func waitLeader(t *testing.T, a *procs.Analyzer, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for !isLeader(context.Background(), a) {
		if time.Since(start) > within {
			t.Fatalf("analyzer %s did not lead within %v\n%s", a.Addr, within, a.Proc.Tail(20))
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

// TestAnalyzerStandbyTakesOverAKilledLeaderMidStageWithOneDecisionPerStep
// runs two `llmcanary analyzer` processes on one real etcd over the real
// fleet (Envoy, ClickHouse, control plane). The leader starts a rollout;
// the standby refuses writes and names the leader. Mid-way through the
// second stage the leader is SIGKILLed: the standby must lead within the
// lease and finish the rollout, and every audit trail (the rollout's
// history, rollout_events in ClickHouse, the control plane's changes)
// must show each step once: one advance, one promotion, nothing repeated,
// nothing skipped.
func TestAnalyzerStandbyTakesOverAKilledLeaderMidStageWithOneDecisionPerStep(t *testing.T) {
	f := telemetryFleet(t, analyzerProfile("v1", 0), analyzerProfile("v2", 0))
	etcd := etcdtest.Start(t)
	policy := processPolicy("8s", 150, "90s")
	group := func(name string) []string {
		return []string{"--etcd-endpoints", strings.Join(etcd.Endpoints, ","), "--etcd-prefix", "/e2e/analyzer",
			"--leader-lease", haLease.String(), "--member", name}
	}
	leader := startAnalyzerProcess(t, f, policy, group("a")...)
	waitLeader(t, leader, 30*time.Second)
	standby := startAnalyzerProcess(t, f, policy, group("b")...)
	ctx := context.Background()
	if isLeader(ctx, standby) {
		t.Fatal("both analyzers report leading")
	}
	stop, _ := drive(t, f)
	defer stop()
	ro, err := analyzerClient(leader).Start(ctx, analyzer.StartRequest{Model: model, Canary: "v2"})
	if err != nil {
		t.Fatal(err)
	}

	// The standby serves the rollout and refuses to act on it.
	if got, err := analyzerClient(standby).Get(ctx, ro.ID); err != nil || got.Model != model {
		t.Fatalf("the standby reads %+v, %v", got, err)
	}
	req, _ := http.NewRequest("POST", "http://"+standby.Addr+"/v1/rollouts/"+ro.ID+"/pause", nil)
	req.Header.Set("Authorization", "Bearer "+local.DevToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(analyzer.HeaderLeader) != "http://"+leader.Addr {
		t.Fatalf("a pause on the standby answered %d with leader %q, want 503 naming http://%s", resp.StatusCode, resp.Header.Get(analyzer.HeaderLeader), leader.Addr)
	}

	// Mid-stage: the leader has advanced, recorded the advance in
	// ClickHouse and looked at the second stage since.
	conn, err := f.ClickHouse.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	deadline := time.Now().Add(60 * time.Second)
	for {
		got, err := analyzerClient(leader).Get(ctx, ro.ID)
		if err == nil && got.Stage == 1 && got.Last != nil && got.Last.Stage == 1 && len(eventCounts(t, conn, ro.ID)) > 0 {
			if got.Status != analyzer.RolloutRunning {
				t.Fatalf("the rollout ended %s before the kill: %s", got.Status, got.Last.Reason)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the rollout never got into its second stage: %+v %v\n%s", got, err, leader.Proc.Tail(20))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := leader.Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	<-leader.Proc.Done()
	took := waitLeader(t, standby, haLease+2*time.Second)
	t.Logf("the standby leads %v after the leader was killed (lease %v)", took, haLease)

	var done *analyzer.RolloutView
	deadline = time.Now().Add(120 * time.Second)
	for {
		done, err = analyzerClient(standby).Get(ctx, ro.ID)
		if err == nil && !done.Status.Active() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the standby did not finish the rollout: %+v %v\n%s", done, err, standby.Proc.Tail(20))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if done.Status != analyzer.RolloutPromoted {
		t.Fatalf("the healthy canary ended %s: %s", done.Status, done.Last.Reason)
	}

	// The rollout's own history: one decision and one traffic move per
	// step, each entry with its own sequence.
	history := map[string]int{}
	seqs := map[uint64]analyzer.Event{}
	for _, e := range done.History {
		if e.Action != analyzer.ActionAdvance && e.Action != analyzer.ActionPromote {
			continue
		}
		history[e.Kind+" "+string(e.Action)]++
		if prev, ok := seqs[e.Seq]; ok {
			t.Errorf("two history entries with sequence %d: %+v and %+v", e.Seq, prev, e)
		}
		seqs[e.Seq] = e
	}
	want := "map[action advance:1 action promote:1 decision advance:1 decision promote:1]"
	if fmt.Sprint(history) != want {
		t.Errorf("the rollout's history holds %v, want %s", history, want)
	}

	// rollout_events in ClickHouse: the same, once the standby's last rows
	// are in.
	deadline = time.Now().Add(20 * time.Second)
	for {
		got := fmt.Sprint(eventCounts(t, conn, ro.ID))
		if got == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rollout_events holds %v, want %s", got, want)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The control plane's audit trail: the rollout set the weights three
	// times, 10 % (at its start, in the name of who started it), 50 %,
	// then the promotion; the takeover re-sent nothing.
	var changes struct {
		Changes []xds.Change `json:"changes"`
	}
	cp := &httpapi.Client{API: "management api", BaseURL: f.API.BaseURL, Token: f.API.Token, HTTP: f.API.HTTP}
	if err := cp.Do(ctx, "GET", "/v1/changes", nil, &changes); err != nil {
		t.Fatal(err)
	}
	var moves []string
	for _, c := range changes.Changes {
		if strings.HasSuffix(c.Summary, " for rollout "+ro.ID) {
			moves = append(moves, c.Summary)
		}
	}
	if len(moves) != 3 {
		t.Fatalf("the rollout changed the control plane %d times, want 3 (10 %%, 50 %%, promote):\n%s", len(moves), strings.Join(moves, "\n"))
	}
}

// eventCounts counts a rollout's advance and promote rows in
// rollout_events by kind and action.
func eventCounts(t *testing.T, conn driver.Conn, id string) map[string]int {
	t.Helper()
	rows, err := conn.Query(context.Background(), fmt.Sprintf(
		"SELECT kind, action, count() FROM %s.%s WHERE rollout_id = ? AND action IN ('advance', 'promote') GROUP BY kind, action",
		wire.Database, chsource.EventsTable), id)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var kind, action string
		var n uint64
		if err := rows.Scan(&kind, &action, &n); err != nil {
			t.Fatal(err)
		}
		out[kind+" "+action] = int(n)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
