//go:build integration

package chsource

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/analyzer/quality"
	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/extproc/chwriter/chwritertest"
	"github.com/llmcanary/llmcanary/internal/procs/chtest"
)

// The fixture's window crosses midnight, so it spans two daily partitions.
var (
	from = time.Date(2026, 3, 10, 23, 59, 50, 0, time.UTC)
	to   = time.Date(2026, 3, 11, 0, 0, 10, 0, time.UTC)
	win  = analyzer.Window{Model: "m", Stable: "v1", Canary: "v2", From: from, To: to}
)

// Each fixture request comes from its own user (bucket) unless a test
// says otherwise.
func bucketOf(id string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(id))
	return h.Sum64()
}

func ok(id, version string, at time.Time, streamed bool, totalMs, ttftMs, itlMs float64, tokens uint32, cost float64) extproc.Record {
	return extproc.Record{RequestID: id, Model: "m", Version: version, Time: at, Path: "/v1/chat/completions",
		Status: 200, Streamed: streamed, TotalMs: totalMs, TTFTMs: ttftMs, ITLMeanMs: itlMs,
		CompletionTokens: tokens, CostUSD: cost, FinishReason: "stop", Bucket: bucketOf(id)}
}

func failed(id, version string, at time.Time, failure string) extproc.Record {
	return extproc.Record{RequestID: id, Model: "m", Version: version, Time: at, Status: 503, Failure: failure, TotalMs: 50, Bucket: bucketOf(id)}
}

// newSource returns a Source that keeps raw values, for assertions.
func newSource(conn driver.Conn, db string) *Source {
	s := New(conn, db)
	s.KeepValues = true
	return s
}

// fixture is a window's worth of requests of both arms, and around them
// requests the window must leave out.
func fixture() []extproc.Record {
	sec := func(s float64) time.Time { return from.Add(time.Duration(s * float64(time.Second))) }
	refused := ok("s2", "v1", sec(5), false, 200, 0, 0, 30, 0.002)
	refused.Refusal = true
	forced := ok("s-forced", "v1", sec(2), true, 9000, 9000, 900, 9, 9)
	forced.Forced = true
	categorised := ok("s-category", "v1", sec(3), true, 9000, 9000, 900, 9, 9)
	categorised.Category = "code"
	otherModel := ok("s-model", "v1", sec(4), true, 9000, 9000, 900, 9, 9)
	otherModel.Model = "other"
	excluded := ok("s-excluded", "v1", sec(4), true, 9000, 9000, 900, 9, 9)
	excluded.Cohort = "excluded"
	optIn := ok("c-opt-in", "v2", sec(4), true, 9000, 9000, 900, 9, 9)
	optIn.Cohort = "opt_in"
	return []extproc.Record{
		ok("s1", "v1", from, true, 100, 10, 5, 20, 0.001),
		refused,
		ok("s3", "v1", sec(11), true, 300, 30, 0, 1, 0.003), // next day; one token, so no ITL
		failed("s4", "v1", to.Add(-time.Millisecond), extproc.FailureHTTP5xx),
		failed("s5", "v1", sec(1), extproc.FailureClientCancel),

		forced, categorised, otherModel, excluded, optIn,
		ok("s-before", "v1", from.Add(-time.Millisecond), true, 9000, 9000, 900, 9, 9),
		ok("s-at-end", "v1", to, true, 9000, 9000, 900, 9, 9),
		ok("s-v3", "v3", sec(4), true, 9000, 9000, 900, 9, 9),

		ok("c1", "v2", sec(6), true, 150, 15, 7, 10, 0.01),
		failed("c2", "v2", sec(7), extproc.FailureEmpty),
		failed("c3", "v2", sec(8), extproc.FailureHTTP429),
		ok("c4", "v2", sec(12), false, 250, 0, 0, 40, 0.02),
	}
}

// fixtureScores rates requests in and out of the window.
func fixtureScores(recs []extproc.Record) []quality.Score {
	byID := map[string]extproc.Record{}
	for _, r := range recs {
		byID[r.RequestID] = r
	}
	score := func(id, source string, v float64) quality.Score {
		r := byID[id]
		return quality.Score{Time: r.Time, RequestID: id, Model: r.Model, Version: r.Version, Score: v, Source: source, Forced: r.Forced}
	}
	return []quality.Score{
		score("s1", quality.SourceJudge, 1),
		score("s1", quality.SourceJudge, 1), // two judges raced: counted once
		score("s1", quality.SourceFeedback, 0),
		score("s2", quality.SourceFeedback, 0.5),
		score("s-forced", quality.SourceFeedback, 0),
		score("s-category", quality.SourceJudge, 0),
		score("s-before", quality.SourceJudge, 0),
		score("s-model", quality.SourceJudge, 0),
		score("c1", quality.SourceJudge, 0.25),
	}
}

func sorted(v []float64) []float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	return v
}

func TestMeasureCountsTheRandomSplitInsideTheWindow(t *testing.T) {
	ch := chtest.Shared(t)
	db := chtest.NewDatabase()
	recs := fixture()
	chwritertest.WriteRecords(t, ch, db, recs)
	conn := chtest.Connect(t, ch)
	store, err := quality.OpenScoreStore(context.Background(), conn, db)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Write(context.Background(), fixtureScores(recs)); err != nil {
		t.Fatal(err)
	}

	m, err := newSource(conn, db).Measure(context.Background(), win)
	if err != nil {
		t.Fatal(err)
	}
	if m.Model != "m" || !m.From.Equal(from) || !m.To.Equal(to) || m.Stable.Version != "v1" || m.Canary.Version != "v2" {
		t.Fatalf("measurements name %s %s %v..%v, want the window's", m.Stable.Version, m.Canary.Version, m.From, m.To)
	}
	s, c := m.Stable, m.Canary
	cases := []struct {
		name      string
		got, want any
	}{
		{"forced, categorised, cohort-routed, other-model and out-of-window requests are left out", s.Requests, 5},
		{"an opt-in user's canary requests are left out", c.Requests, 4},
		{"failures count server errors, not client cancellations", s.Failures, 1},
		{"empty answers and rate limits are failures", c.Failures, 2},
		{"cancelled requests count as requests only", c.Requests, 4},
		{"successes are requests without failure", [2]int{s.Successes, c.Successes}, [2]int{3, 2}},
		{"refusals are counted among successes", [2]int{s.Refusals, c.Refusals}, [2]int{1, 0}},
		{"latency lists successes' total_ms, both days of the window", sorted(s.LatencyMs), []float64{100, 200, 300}},
		{"canary latency", sorted(c.LatencyMs), []float64{150, 250}},
		{"ttft lists streamed successes only", [2][]float64{sorted(s.TTFTMs), sorted(c.TTFTMs)}, [2][]float64{{10, 30}, {15}}},
		{"itl lists streamed successes with a gap", [2][]float64{sorted(s.ITLMs), sorted(c.ITLMs)}, [2][]float64{{5}, {7}}},
		{"cost lists successes", [2][]float64{sorted(s.CostUSD), sorted(c.CostUSD)}, [2][]float64{{0.001, 0.002, 0.003}, {0.01, 0.02}}},
		{"completion tokens list successes", [2][]float64{sorted(s.CompletionTokens), sorted(c.CompletionTokens)}, [2][]float64{{1, 20, 30}, {10, 40}}},
		{"quality averages each counted request's scores, one per source", sorted(s.Quality), []float64{0.5, 0.5}},
		{"canary quality", c.Quality, []float64{0.25}},
		{"users are distinct buckets", [2]int{s.Users, c.Users}, [2]int{5, 4}},
		{"judged answers are counted", [2]int{s.Judged, c.Judged}, [2]int{2, 1}},
		{"per-user sums hold the latency of successes", [2]float64{s.Sums[analyzer.MetricLatency].S, c.Sums[analyzer.MetricLatency].S}, [2]float64{600, 400}},
		{"per-user sums hold failures among requests", [2]float64{s.Sums[analyzer.MetricErrorRate].S, c.Sums[analyzer.MetricErrorRate].N}, [2]float64{1, 4}},
		{"each user's first failure is an event, in time order", eventsOf(m, analyzer.MetricErrorRate), "canary canary stable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !equal(tc.got, tc.want) {
				t.Errorf("got %v, want %v", tc.got, tc.want)
			}
		})
	}
}

func eventsOf(m analyzer.Measurements, metric analyzer.Metric) string {
	var arms []string
	for _, e := range m.Events[metric] {
		arm := "stable"
		if e.Canary {
			arm = "canary"
		}
		arms = append(arms, arm)
	}
	return strings.Join(arms, " ")
}

func equal(a, b any) bool {
	switch a := a.(type) {
	case []float64:
		return slices.Equal(a, b.([]float64))
	case [2]float64:
		return a == b.([2]float64)
	case [2][]float64:
		bb := b.([2][]float64)
		return slices.Equal(a[0], bb[0]) && slices.Equal(a[1], bb[1])
	}
	return a == b
}

func TestMeasureWindowBoundsAreExactToTheMillisecond(t *testing.T) {
	ch := chtest.Shared(t)
	db := chtest.NewDatabase()
	// Each request's latency names it: 1 before the window, 2 first, 3
	// last, 4 at its end.
	at := func(id string, d time.Duration, latency float64) extproc.Record {
		return ok(id, "v1", from.Add(d), true, latency, 1, 1, 2, 0)
	}
	span := to.Sub(from)
	chwritertest.WriteRecords(t, ch, db, []extproc.Record{
		at("before", -time.Millisecond, 1),
		at("first", 0, 2),
		at("last", span-time.Millisecond, 3),
		at("end", span, 4),
		ok("canary", "v2", from.Add(time.Second), true, 1, 1, 1, 2, 0),
	})
	src := newSource(chtest.Connect(t, ch), db)
	ms := time.Millisecond
	cases := []struct {
		name     string
		from, to time.Time
		want     []float64
	}{
		{"from is inclusive and to exclusive", from, to, []float64{2, 3}},
		{"one millisecond holds the request at its start", from, from.Add(ms), []float64{2}},
		{"the last millisecond holds the request at its start", to.Add(-ms), to, []float64{3}},
		{"a window one millisecond later", from.Add(ms), to.Add(ms), []float64{3, 4}},
		{"a window one millisecond earlier", from.Add(-ms), to.Add(-ms), []float64{1, 2}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := win
			w.From, w.To = tc.from, tc.to
			m, err := src.Measure(context.Background(), w)
			if err != nil && !errors.Is(err, analyzer.ErrNoData) {
				t.Fatal(err)
			}
			if got := sorted(m.Stable.LatencyMs); !slices.Equal(got, tc.want) {
				t.Errorf("stable latencies %v, want %v", got, tc.want)
			}
		})
	}
}

func TestMeasureReportsNoDataOnlyWhenNeitherArmHasARequest(t *testing.T) {
	ch := chtest.Shared(t)
	db := chtest.NewDatabase()
	chwritertest.WriteRecords(t, ch, db, []extproc.Record{
		ok("s1", "v1", from, true, 100, 10, 5, 20, 0.001),
		ok("s-forced-canary", "v2", from, true, 100, 10, 5, 20, 0.001),
	})
	chwritertest.WriteRecords(t, ch, db, []extproc.Record{{RequestID: "forced", Model: "m", Version: "v2", Time: from, Forced: true}})
	src := New(chtest.Connect(t, ch), db)
	cases := []struct {
		name           string
		w              analyzer.Window
		noData         bool
		stable, canary int
	}{
		{"a window without requests", analyzer.Window{Model: "m", Stable: "v1", Canary: "v2", From: from.Add(-time.Hour), To: from}, true, 0, 0},
		{"an unknown model", analyzer.Window{Model: "nope", Stable: "v1", Canary: "v2", From: from, To: to}, true, 0, 0},
		{"a canary with only forced requests is one empty arm, not no data", analyzer.Window{Model: "m", Stable: "v1", Canary: "v9", From: from, To: to}, false, 1, 0},
		{"a stable without requests is one empty arm, not no data", analyzer.Window{Model: "m", Stable: "v0", Canary: "v1", From: from, To: to}, false, 0, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := src.Measure(context.Background(), tc.w)
			if errors.Is(err, analyzer.ErrNoData) != tc.noData || err != nil && !tc.noData {
				t.Fatalf("err = %v, want no data %v", err, tc.noData)
			}
			if m.Stable.Requests != tc.stable || m.Canary.Requests != tc.canary {
				t.Errorf("requests %d/%d, want %d/%d", m.Stable.Requests, m.Canary.Requests, tc.stable, tc.canary)
			}
		})
	}
}

func TestWatermarkMovesWhenARowArrives(t *testing.T) {
	ch := chtest.Shared(t)
	db := chtest.NewDatabase()
	chwritertest.WriteRecords(t, ch, db, []extproc.Record{ok("s1", "v1", from, true, 100, 10, 5, 20, 0.001)})
	src := New(chtest.Connect(t, ch), db)
	before, err := src.Watermark(context.Background(), win)
	if err != nil {
		t.Fatal(err)
	}
	again, err := src.Watermark(context.Background(), win)
	if err != nil || again != before {
		t.Fatalf("watermark %q then %q (%v) without a new row, want equal", before, again, err)
	}
	chwritertest.WriteRecords(t, ch, db, []extproc.Record{ok("c1", "v2", from.Add(time.Second), true, 100, 10, 5, 20, 0.001)})
	after, err := src.Watermark(context.Background(), win)
	if err != nil || after == before {
		t.Fatalf("watermark %q after a new row (%v), want it to move from %q", after, err, before)
	}
}

func TestMeasureWithoutQualityTableHasNoScores(t *testing.T) {
	ch := chtest.Shared(t)
	db := chtest.NewDatabase()
	chwritertest.WriteRecords(t, ch, db, fixture())
	m, err := newSource(chtest.Connect(t, ch), db).Measure(context.Background(), win)
	if err != nil {
		t.Fatal(err)
	}
	if m.Stable.Quality != nil || m.Canary.Quality != nil || m.Stable.Requests != 5 {
		t.Errorf("stable %+v, canary quality %v: want counts and no scores", m.Stable, m.Canary.Quality)
	}
}

func TestMeasureRejectsInvalidWindows(t *testing.T) {
	cases := []struct {
		name string
		db   string
		w    analyzer.Window
	}{
		{"no model", "", analyzer.Window{Stable: "a", Canary: "b", From: from, To: to}},
		{"no canary", "", analyzer.Window{Model: "m", Stable: "a", From: from, To: to}},
		{"stable is the canary", "", analyzer.Window{Model: "m", Stable: "a", Canary: "a", From: from, To: to}},
		{"empty window", "", analyzer.Window{Model: "m", Stable: "a", Canary: "b", From: to, To: to}},
		{"backwards window", "", analyzer.Window{Model: "m", Stable: "a", Canary: "b", From: to, To: from}},
		{"database name with SQL in it", "x; DROP TABLE y", win},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(nil, tc.db).Measure(context.Background(), tc.w)
			if err == nil || errors.Is(err, analyzer.ErrNoData) {
				t.Fatalf("err = %v, want an invalid-window error", err)
			}
		})
	}
}

func TestMeasureFailsWhenClickHouseIsDown(t *testing.T) {
	ch := chtest.Own(t)
	db := chtest.NewDatabase()
	chwritertest.WriteRecords(t, ch, db, fixture())
	src := New(chtest.Connect(t, ch), db)
	if _, err := src.Measure(context.Background(), win); err != nil {
		t.Fatalf("before the outage: %v", err)
	}
	if err := ch.Kill(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := src.Measure(ctx, win)
	if err == nil || errors.Is(err, analyzer.ErrNoData) {
		t.Fatalf("err = %v, want a query error that is not ErrNoData", err)
	}
}

// TestMeasureComparesTailsWithEachUsersOwnBaseline: a user whose
// requests were always slow (long prompts) is slow on the canary too. With
// the hour before the rollout as baseline, that is no tail event; without
// it, every one of their requests is beyond the threshold.
func TestMeasureComparesTailsWithEachUsersOwnBaseline(t *testing.T) {
	ch := chtest.Shared(t)
	db := chtest.NewDatabase()
	start := from.Add(time.Hour)
	var recs []extproc.Record
	at := func(i int) time.Time { return start.Add(time.Duration(i) * 10 * time.Millisecond) }
	user := func(r extproc.Record, b uint64) extproc.Record { r.Bucket = b; return r }
	for u := range 20 {
		latency, n := 100.0, 20
		if u == 0 {
			latency, n = 2000, 200 // the slow user, who is busy
		}
		for i := range n {
			recs = append(recs, user(ok(fmt.Sprintf("pre-%d-%d", u, i), "v1", start.Add(-time.Duration(1+i)*time.Second-time.Duration(u)*time.Millisecond), false, latency, 0, 0, 20, 0), uint64(u)))
		}
	}
	for i := range 200 { // calibration: the first 100 successes fix the p90
		recs = append(recs, user(ok(fmt.Sprintf("cal-%d", i), "v1", at(i), false, 80+float64(i%41), 0, 0, 20, 0), uint64(1+i%19)))
	}
	for i := range 5 { // then the slow user, now on the canary, as slow as ever
		recs = append(recs, user(ok(fmt.Sprintf("slow-%d", i), "v2", at(300+i), false, 2000, 0, 0, 20, 0), 0))
	}
	chwritertest.WriteRecords(t, ch, db, recs)
	src := New(chtest.Connect(t, ch), db)
	w := analyzer.Window{Model: "m", Stable: "v1", Canary: "v2", RolloutFrom: start, From: start, To: at(400), TailQuantile: 0.9}

	plain, err := src.Measure(context.Background(), w)
	if err != nil {
		t.Fatal(err)
	}
	w.BaselineFrom = start.Add(-time.Hour)
	relative, err := src.Measure(context.Background(), w)
	if err != nil {
		t.Fatal(err)
	}
	canaryEvents := func(m analyzer.Measurements) int {
		n := 0
		for _, e := range m.Events[analyzer.MetricLatencyP99] {
			if e.Canary {
				n++
			}
		}
		return n
	}
	if n := canaryEvents(plain); n != 1 || plain.TailPerUser {
		t.Errorf("without a baseline: %d canary latency tail events (per user %v), want the slow user's one", n, plain.TailPerUser)
	}
	if n := canaryEvents(relative); n != 0 || !relative.TailPerUser {
		t.Errorf("with the baseline: %d canary latency tail events (per user %v), want none: the user is as slow as usual", n, relative.TailPerUser)
	}
}

// TestLatencyBaselineComesFromTheRequestLog: before a rollout only a sample
// of users is timed, but Envoy's access log records every request. A slow
// user never timed before the rollout still has their usual latency from
// the request log, so their slow canary requests are no tail events.
func TestLatencyBaselineComesFromTheRequestLog(t *testing.T) {
	ch := chtest.Shared(t)
	db := chtest.NewDatabase()
	start := from.Add(time.Hour)
	at := func(i int) time.Time { return start.Add(time.Duration(i) * 10 * time.Millisecond) }
	user := func(r extproc.Record, b uint64) extproc.Record { r.Bucket = b; return r }
	var recs []extproc.Record
	var log []extproc.LogEntry
	for u := range 20 {
		latency, n := 100.0, 20
		if u == 0 {
			latency, n = 2000, 200 // the slow user, in the request log only
		}
		for i := range n {
			log = append(log, extproc.LogEntry{Time: start.Add(-time.Duration(1+i)*time.Second - time.Duration(u)*time.Millisecond),
				RequestID: fmt.Sprintf("pre-%d-%d", u, i), Model: "m", Version: "v1", Path: "/v1/chat/completions",
				Status: 200, DurationMs: latency, Bucket: uint64(u)})
		}
	}
	for i := range 200 {
		recs = append(recs, user(ok(fmt.Sprintf("cal-%d", i), "v1", at(i), false, 80+float64(i%41), 0, 0, 20, 0), uint64(1+i%19)))
	}
	for i := range 5 {
		recs = append(recs, user(ok(fmt.Sprintf("slow-%d", i), "v2", at(300+i), false, 2000, 0, 0, 20, 0), 0))
	}
	chwritertest.WriteRecords(t, ch, db, recs)
	chwritertest.WriteLog(t, ch, db, log)
	src := New(chtest.Connect(t, ch), db)
	w := analyzer.Window{Model: "m", Stable: "v1", Canary: "v2", RolloutFrom: start, From: start, To: at(400), TailQuantile: 0.9, BaselineFrom: start.Add(-time.Hour)}
	m, err := src.Measure(context.Background(), w)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range m.Events[analyzer.MetricLatencyP99] {
		if e.Canary {
			t.Fatalf("a canary latency tail event at %v: the slow user's baseline from the request log was not used", e.At)
		}
	}
	if !m.TailPerUser {
		t.Fatal("no per-user baseline")
	}
}
