//go:build integration

package quality

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/internal/procs/chtest"
	"github.com/llmcanary/llmcanary/sim"
)

// judgeFixture is captured traffic: good and bad answers of two versions,
// a forced request, a failed request and a request without capture.
func judgeFixture(now time.Time) []extproc.Record {
	var recs []extproc.Record
	add := func(id, version, completion string, change func(*extproc.Record)) {
		r := extproc.Record{RequestID: id, Model: "m", Version: version, Status: 200,
			Time:     now.Add(-time.Duration(len(recs)) * 1500 * time.Millisecond),
			Captured: true, Prompt: `{"messages":[{"role":"user","content":"Where is the Eiffel Tower?"}]}`, Completion: completion}
		if change != nil {
			change(&r)
		}
		recs = append(recs, r)
	}
	good, bad := "It is in Paris, France.", "Sure! "+sim.BadAnswerMarker+" Anything else?"
	add("good-1", "v1", good, nil)
	add("good-2", "v2", good, nil)
	add("bad-1", "v2", bad, nil)
	add("bad-2", "v1", bad, nil)
	add("forced-bad", "v2", bad, func(r *extproc.Record) { r.Forced = true })
	add("failed", "v2", "", func(r *extproc.Record) { r.Status, r.Failure = 503, extproc.FailureHTTP5xx })
	add("uncaptured", "v1", "", func(r *extproc.Record) { r.Captured = false })
	return recs
}

// wantJudged is what judging judgeFixture stores: sim's judge scores 0 for
// an answer with the marker and 1 otherwise.
func wantJudged(recs []extproc.Record) map[string]Score {
	want := map[string]Score{}
	for _, r := range recs {
		if !r.Captured || r.Failure != "" {
			continue
		}
		want[r.RequestID] = Score{Time: r.Time.Truncate(time.Millisecond).UTC(), RequestID: r.RequestID, Model: r.Model,
			Version: r.Version, Score: sim.JudgeScore(r.Completion), Source: SourceJudge, Forced: r.Forced}
	}
	return want
}

// simJudge serves the simulated pool in judge mode and counts requests.
type simJudge struct {
	srv   *httptest.Server
	calls atomic.Int64
	auth  atomic.Value // last Authorization header
	h     atomic.Pointer[http.Handler]
}

func startSimJudge(t *testing.T, p sim.Profile) *simJudge {
	t.Helper()
	j := &simJudge{}
	j.set(t, p)
	j.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		j.calls.Add(1)
		j.auth.Store(r.Header.Get("authorization"))
		(*j.h.Load()).ServeHTTP(w, r)
	}))
	t.Cleanup(j.srv.Close)
	return j
}

func (j *simJudge) set(t *testing.T, p sim.Profile) {
	t.Helper()
	s, err := sim.New(p)
	if err != nil {
		t.Fatal(err)
	}
	var h http.Handler = s
	j.h.Store(&h)
}

func newJudge(t *testing.T, store *ScoreStore, endpoint string, change func(*JudgeOptions)) *Judge {
	t.Helper()
	o := JudgeOptions{Conn: store.conn, Store: store, Endpoint: endpoint, BatchSize: 100, Concurrency: 3,
		HTTP: &http.Client{Timeout: 5 * time.Second}}
	if change != nil {
		change(&o)
	}
	j, err := NewJudge(o)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func checkJudged(t *testing.T, got []Score, want map[string]Score) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("stored %d scores, want %d: %+v", len(got), len(want), got)
	}
	for _, s := range got {
		if w, ok := want[s.RequestID]; !ok || s != w {
			t.Errorf("stored %+v, want %+v", s, w)
		}
	}
}

func TestJudgeGradesEachCaptureOnce(t *testing.T) {
	ch := chtest.Shared(t)
	recs := judgeFixture(time.Now())
	store, conn := openStore(t, ch, recs)
	judge := startSimJudge(t, sim.Profile{Version: "judge", Judge: true})
	j := newJudge(t, store, judge.srv.URL, func(o *JudgeOptions) { o.APIKey = "judge-key" })

	n, err := j.RunOnce(context.Background())
	if err != nil || n != 5 {
		t.Fatalf("first round judged %d (%v), want the 5 captures of successful requests", n, err)
	}
	checkJudged(t, storedScores(t, conn, store.Database()), wantJudged(recs))
	if a, _ := judge.auth.Load().(string); a != "Bearer judge-key" {
		t.Errorf("authorization %q, want the API key as bearer token", a)
	}

	calls := judge.calls.Load()
	n, err = j.RunOnce(context.Background())
	if err != nil || n != 0 {
		t.Fatalf("second round judged %d (%v), want 0", n, err)
	}
	if judge.calls.Load() != calls {
		t.Errorf("second round called the judge %d times, want none", judge.calls.Load()-calls)
	}
	fresh := newJudge(t, store, judge.srv.URL, nil)
	if n, err := fresh.RunOnce(context.Background()); err != nil || n != 0 {
		t.Fatalf("a new judge on the same database judged %d (%v), want 0", n, err)
	}
	checkJudged(t, storedScores(t, conn, store.Database()), wantJudged(recs))
}

func TestJudgeDrainsABacklogInBatches(t *testing.T) {
	ch := chtest.Shared(t)
	recs := judgeFixture(time.Now())
	store, conn := openStore(t, ch, recs)
	judge := startSimJudge(t, sim.Profile{Version: "judge", Judge: true})
	j := newJudge(t, store, judge.srv.URL, func(o *JudgeOptions) { o.BatchSize = 2 })

	var rounds []int
	for range 4 {
		n, err := j.RunOnce(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		rounds = append(rounds, n)
	}
	if fmt.Sprint(rounds) != "[2 2 1 0]" {
		t.Errorf("rounds judged %v, want [2 2 1 0]", rounds)
	}
	checkJudged(t, storedScores(t, conn, store.Database()), wantJudged(recs))
}

func TestJudgeGradesTheCanaryFirst(t *testing.T) {
	ch := chtest.Shared(t)
	recs := judgeFixture(time.Now())
	store, conn := openStore(t, ch, recs)
	judge := startSimJudge(t, sim.Profile{Version: "judge", Judge: true})
	// v2's captures are older than v1's newest: newest-first alone would
	// grade v1 first.
	j := newJudge(t, store, judge.srv.URL, func(o *JudgeOptions) {
		o.BatchSize = 3
		o.Priority = func() []string { return []string{"v2"} }
	})
	if n, err := j.RunOnce(context.Background()); err != nil || n != 3 {
		t.Fatalf("first round judged %d (%v), want 3", n, err)
	}
	versions := map[string]int{}
	for _, s := range storedScores(t, conn, store.Database()) {
		versions[s.Version]++
	}
	// v2 has three captures of successful requests (good-2, bad-1, forced-bad).
	if versions["v2"] != 3 || versions["v1"] != 0 {
		t.Errorf("first round graded %v, want the canary v2's 3 captures before any of v1", versions)
	}
}

func TestJudgeDownStoresNothingAndLosesNothing(t *testing.T) {
	ch := chtest.Shared(t)
	recs := judgeFixture(time.Now())
	cases := []struct {
		name     string
		endpoint func(t *testing.T) (url string, calls func() int64)
	}{
		{"nothing listens", func(t *testing.T) (string, func() int64) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := l.Addr().String()
			l.Close()
			return "http://" + addr, func() int64 { return 0 }
		}},
		{"the judge answers 500", func(t *testing.T) (string, func() int64) {
			j := startSimJudge(t, sim.Profile{Version: "judge", Judge: true, ErrorRate: 1})
			return j.srv.URL, j.calls.Load
		}},
		{"the judge rate-limits", func(t *testing.T) (string, func() int64) {
			j := startSimJudge(t, sim.Profile{Version: "judge", Judge: true, RateLimitRate: 1})
			return j.srv.URL, j.calls.Load
		}},
		{"the judge model is unknown", func(t *testing.T) (string, func() int64) {
			j := startSimJudge(t, sim.Profile{Version: "judge", Model: "another-judge", Judge: true})
			return j.srv.URL, j.calls.Load
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			store, conn := openStore(t, ch, recs)
			url, calls := tc.endpoint(t)
			j := newJudge(t, store, url, func(o *JudgeOptions) { o.Concurrency = 2 })
			n, err := j.RunOnce(context.Background())
			if err == nil || n != 0 {
				t.Fatalf("judged %d (%v), want an error and nothing judged", n, err)
			}
			if c := calls(); c > 2 {
				t.Errorf("the judge was called %d times in a failing round, want at most one per worker", c)
			}
			if got := storedScores(t, conn, store.Database()); len(got) != 0 {
				t.Fatalf("stored %+v while the judge was down", got)
			}
		})
	}
}

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestJudgeRunRecoversWhenTheJudgeComesBackAndLogsOnce(t *testing.T) {
	ch := chtest.Shared(t)
	recs := judgeFixture(time.Now())
	store, conn := openStore(t, ch, recs)
	judge := startSimJudge(t, sim.Profile{Version: "judge", Judge: true, ErrorRate: 1})
	var logs syncBuffer
	j := newJudge(t, store, judge.srv.URL, func(o *JudgeOptions) {
		o.Interval = 50 * time.Millisecond
		o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- j.Run(ctx) }()

	waitFor(t, 10*time.Second, "five failing rounds", func() bool { return judge.calls.Load() >= 5 })
	if got := storedScores(t, conn, store.Database()); len(got) != 0 {
		t.Fatalf("stored %+v while the judge failed", got)
	}
	judge.set(t, sim.Profile{Version: "judge", Judge: true})
	want := wantJudged(recs)
	waitFor(t, 10*time.Second, "every capture judged", func() bool { return len(storedScores(t, conn, store.Database())) >= len(want) })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run returned %v after cancel, want nil", err)
	}
	checkJudged(t, storedScores(t, conn, store.Database()), want)
	out := logs.String()
	if c := strings.Count(out, "level=WARN"); c != 1 {
		t.Errorf("%d warnings over the outage, want 1:\n%s", c, out)
	}
	if !strings.Contains(out, "succeed again") {
		t.Errorf("no recovery line in the log:\n%s", out)
	}
}

func TestJudgeSkipsRepliesWithoutAScore(t *testing.T) {
	ch := chtest.Shared(t)
	recs := judgeFixture(time.Now())
	store, conn := openStore(t, ch, recs)
	// The simulated pool always answers in form; an unparsable judge is
	// this stand-in: a chat completion whose content has no score.
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("content-type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"choices": []any{map[string]any{
			"index": 0, "message": map[string]string{"role": "assistant", "content": "This answer seems fine to me."}}}})
	}))
	defer srv.Close()
	j := newJudge(t, store, srv.URL, nil)

	n, err := j.RunOnce(context.Background())
	if err != nil || n != 0 {
		t.Fatalf("judged %d (%v), want nothing scored and no error", n, err)
	}
	if calls.Load() != 5 {
		t.Fatalf("judge called %d times, want once per capture", calls.Load())
	}
	if n, err := j.RunOnce(context.Background()); err != nil || n != 0 || calls.Load() != 5 {
		t.Fatalf("second round judged %d (%v) with %d calls, want the skipped captures left alone", n, err, calls.Load())
	}
	if got := storedScores(t, conn, store.Database()); len(got) != 0 {
		t.Fatalf("stored %+v from unparsable replies", got)
	}
}

func TestNewJudgeValidatesOptions(t *testing.T) {
	conn := chtest.Connect(t, chtest.Shared(t))
	store := &ScoreStore{conn: conn, db: "llmcanary"}
	valid := JudgeOptions{Conn: conn, Store: store, Endpoint: "http://127.0.0.1:8100"}
	if _, err := NewJudge(valid); err != nil {
		t.Fatalf("valid options rejected: %v", err)
	}
	cases := []struct {
		name   string
		change func(*JudgeOptions)
	}{
		{"no connection", func(o *JudgeOptions) { o.Conn = nil }},
		{"no store", func(o *JudgeOptions) { o.Store = nil }},
		{"no endpoint", func(o *JudgeOptions) { o.Endpoint = "" }},
		{"endpoint without scheme", func(o *JudgeOptions) { o.Endpoint = "127.0.0.1:8100" }},
		{"endpoint of another scheme", func(o *JudgeOptions) { o.Endpoint = "ftp://127.0.0.1:8100" }},
		{"negative batch", func(o *JudgeOptions) { o.BatchSize = -1 }},
		{"negative interval", func(o *JudgeOptions) { o.Interval = -time.Second }},
		{"database with SQL", func(o *JudgeOptions) { o.Database = "x;y" }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := valid
			tc.change(&o)
			if _, err := NewJudge(o); err == nil {
				t.Fatal("NewJudge accepted invalid options")
			}
		})
	}
}

// waitFor polls cond until it holds; the timeout only bounds a failing test.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
