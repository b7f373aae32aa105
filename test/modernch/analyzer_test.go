//go:build integration

// Package modernch_test runs the analyzer's and the quality service's own
// ClickHouse code — the measurement of a stage with per-user baselines and
// quality scores, the watermark, the rollout report, the judge, user
// feedback — over the same rows on the real 18.16 server and on a current
// ClickHouse engine (chDB, 26.x) holding the modern schema, and checks
// that both give the same answers.
package modernch_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/analyzer/chsource"
	"github.com/llmcanary/llmcanary/analyzer/quality"
	"github.com/llmcanary/llmcanary/analyzer/report"
	"github.com/llmcanary/llmcanary/analyzer/stats"
	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/extproc/chwriter/chwritertest"
	"github.com/llmcanary/llmcanary/internal/procs/chdbtest"
	"github.com/llmcanary/llmcanary/internal/procs/chtest"
	"github.com/llmcanary/llmcanary/internal/procs/modernch"
	"github.com/llmcanary/llmcanary/sim"
)

func TestMain(m *testing.M) { chtest.Main(m) }

const model = "llama-3-8b"

// servers is one database with the same rows on 18.16 and on chDB.
type servers struct {
	db          string
	old, modern driver.Conn
	start       time.Time // the rollout's start
	rollout     *analyzer.Rollout
}

// writeTraffic writes an hour of stable traffic before a rollout and 20
// minutes of the rollout (20 % canary, slower and failing more), from 300
// users of skewed activity, each with a latency level of their own:
// measured requests, Envoy's access log of every request, captures with
// the judge's scores and user feedback, and three looks of the decision
// log. Every request has its own millisecond. Then it mirrors the database
// onto chDB.
func writeTraffic(t *testing.T) servers {
	t.Helper()
	ctx := context.Background()
	ch := chtest.Shared(t)
	s := servers{db: chtest.NewDatabase(), old: chtest.Connect(t, ch), modern: chdbtest.Start(t)}
	s.start = time.Now().UTC().Add(-30 * time.Minute).Truncate(time.Minute)
	rnd := rand.New(rand.NewPCG(13, 17))
	level := make([]float64, 300)
	for u := range level {
		level[u] = 150 + 600*rnd.Float64()
	}
	user := func() int { x := rnd.Float64(); return int(300 * x * x) } // a few busy users, many quiet ones

	var recs []extproc.Record
	var logs []extproc.LogEntry
	var scores []quality.Score
	add := func(at time.Time, i int, canary bool) {
		u := user()
		v, slow, fail := "v1", 1.0, 0.01
		if canary {
			v, slow, fail = "v2", 1.15, 0.03
		}
		r := extproc.Record{Time: at, RequestID: fmt.Sprintf("r-%05d", i), Model: model, Version: v, Cluster: model + "_" + v,
			Path: "/v1/chat/completions", Bucket: uint64(u), Status: 200, Streamed: rnd.Float64() < 0.8, PromptTokens: 40,
			CompletionTokens: uint32(1 + rnd.IntN(60)), TokensFromUsage: true, FinishReason: "stop", SampleRate: 1}
		r.TTFTMs = slow * level[u] * (0.2 + 0.1*rnd.Float64())
		r.ITLMeanMs = slow * (5 + 5*rnd.Float64())
		r.TotalMs = r.TTFTMs + float64(r.CompletionTokens)*r.ITLMeanMs
		r.CostUSD = 1e-6 * float64(r.PromptTokens+r.CompletionTokens)
		switch x := rnd.Float64(); {
		case x < fail:
			r.Status, r.Failure = 503, extproc.FailureHTTP5xx
		case x < fail+0.01:
			r.Failure = extproc.FailureClientCancel
		case x < fail+0.03:
			r.Refusal = true
		case x < fail+0.04:
			r.Category = "code"
		case x < fail+0.05:
			r.Forced = true
		}
		if r.Failure == "" && i%4 == 0 {
			r.Captured, r.Prompt, r.Completion = true, fmt.Sprintf("user %d asks question %d", u, i), fmt.Sprintf("answer %d of %s", i, v)
			if i%8 == 0 { // the other half is left for the judge
				s := 0.9 - 0.3*float64(i%3)
				scores = append(scores, quality.Score{Time: at, RequestID: r.RequestID, Model: model, Version: v, Score: s, Source: quality.SourceJudge, Forced: r.Forced})
			}
		}
		if r.Failure == "" && i%20 == 1 {
			scores = append(scores, quality.Score{Time: at, RequestID: r.RequestID, Model: model, Version: v, Score: float64(i % 2), Source: quality.SourceFeedback, Forced: r.Forced})
		}
		recs = append(recs, r)
		logs = append(logs, extproc.LogEntry{Time: at, RequestID: r.RequestID, Model: model, Version: v, Cluster: r.Cluster, Path: r.Path,
			Status: r.Status, DurationMs: r.TotalMs, Bucket: r.Bucket, Forced: r.Forced, SampleRate: r.SampleRate})
	}
	i := 0
	for ms := int64(0); ms < int64(time.Hour/time.Millisecond); ms += 900 + rnd.Int64N(400) {
		add(s.start.Add(-time.Hour+time.Duration(ms)*time.Millisecond), i, false)
		i++
	}
	for ms := int64(0); ms < int64(20*time.Minute/time.Millisecond); ms += 200 + rnd.Int64N(200) {
		add(s.start.Add(time.Duration(ms)*time.Millisecond), i, uint64(user())%100 < 20)
		i++
	}
	// A pre-flight's forced requests to both versions, early in the rollout.
	for n := range 24 {
		v := []string{"v1", "v2"}[n%2]
		at := s.start.Add(time.Duration(n)*time.Second + time.Duration(n)*time.Millisecond)
		r := extproc.Record{Time: at, RequestID: fmt.Sprintf("%sr-1:suite:%d:%s", analyzer.PreflightIDPrefix, n/2, v), Model: model, Version: v,
			Cluster: model + "_" + v, Path: "/v1/chat/completions", Status: 200, Streamed: n%3 != 0, Forced: true, PromptTokens: 30,
			CompletionTokens: 20, TokensFromUsage: true, FinishReason: "stop", SampleRate: 1, TTFTMs: 40 + float64(n), TotalMs: 300 + 7*float64(n)}
		if n == 5 {
			r.Status, r.Failure = 500, extproc.FailureHTTP5xx
		}
		recs = append(recs, r)
	}
	// Left out by every reader: another model, and a request after the window.
	add(s.start.Add(time.Minute+time.Millisecond/2), i, true)
	recs[len(recs)-1].Model = "mistral"
	chwritertest.WriteRecords(t, ch, s.db, recs)
	chwritertest.WriteLog(t, ch, s.db, logs)

	qs, err := quality.OpenScoreStore(ctx, s.old, s.db)
	if err != nil {
		t.Fatal(err)
	}
	if err := qs.Write(ctx, scores); err != nil {
		t.Fatal(err)
	}
	s.rollout = &analyzer.Rollout{ID: "r-1", Model: model, Stable: "v1", Canary: "v2", Mode: analyzer.ModeCanary,
		Plan: analyzer.Plan{Policy: analyzer.DefaultPolicy()}, Status: analyzer.RolloutRunning, Created: s.start, Updated: s.start.Add(20 * time.Minute),
		Preflight: &analyzer.PreflightStage{Status: analyzer.PreflightPassed, Started: s.start, Ended: s.start.Add(30 * time.Second)}}
	writeDecisions(t, s.old, s.db, s.rollout)

	copied, err := modernch.Mirror(ctx, s.old, s.modern, s.db)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rows on both servers: %v", copied)
	return s
}

// writeDecisions records three looks at a rollout through the decision
// log, as the analyzer does: two metrics each, one interval unbounded below.
func writeDecisions(t *testing.T, conn driver.Conn, db string, ro *analyzer.Rollout) {
	t.Helper()
	ctx := context.Background()
	dl, err := chsource.NewDecisionLog(ctx, conn, db, nil)
	if err != nil {
		t.Fatal(err)
	}
	before := *ro
	for k := range 3 {
		after := before
		after.Last = &analyzer.Decision{At: ro.Created.Add(time.Duration(k+1) * 5 * time.Minute), Action: analyzer.ActionHold, Code: analyzer.CodeMinSamples,
			Metrics: []analyzer.MetricResult{
				{Metric: analyzer.MetricLatency, Kind: analyzer.KindRelative, Status: analyzer.StatusUndecided, Estimate: 0.15, Tolerance: 0.2, CI: &stats.Interval{Lo: 0.05 * float64(k), Hi: 0.4}},
				{Metric: analyzer.MetricErrorRate, Kind: analyzer.KindPoints, Status: analyzer.StatusUndecided, Estimate: 0.02, Tolerance: 0.03, CI: &stats.Interval{Lo: math.Inf(-1), Hi: 0.05}},
			}}
		after.History = append(before.History, analyzer.Event{At: after.Last.At, Kind: "decision", Action: analyzer.ActionHold, Code: analyzer.CodeMinSamples, Reason: fmt.Sprintf("hold %d", k)})
		dl.Changed(&before, &after)
		before = after
	}
	dl.Flush(ctx)
}

// The decision log's own INSERTs on a modern server, read back by the
// report's reader: the same looks as on 18.16.
func TestDecisionLogWritesAndReadsBackAlikeOnAModernServer(t *testing.T) {
	ctx := context.Background()
	ch := chtest.Shared(t)
	db := chtest.NewDatabase()
	old, modern := chtest.Connect(t, ch), chdbtest.Start(t)
	ro := &analyzer.Rollout{ID: "r-2", Model: model, Stable: "v1", Canary: "v2", Created: time.Now().UTC().Add(-time.Hour)}
	var looks [2][]chsource.Look
	for i, conn := range []driver.Conn{old, modern} {
		if err := conn.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+db); err != nil {
			t.Fatal(err)
		}
		writeDecisions(t, conn, db, ro)
		var err error
		if looks[i], err = chsource.ReadLooks(ctx, conn, db, ro.ID); err != nil {
			t.Fatal(err)
		}
	}
	if len(looks[0]) != 6 {
		t.Fatalf("%d looks read back from 18.16, want 6", len(looks[0]))
	}
	if d := differences(reflect.ValueOf(looks[0]), reflect.ValueOf(looks[1]), "looks"); len(d) > 0 {
		t.Errorf("the modern server keeps other looks:\n%s", strings.Join(d, "\n"))
	}
	for _, tbl := range []string{chsource.EventsTable, chsource.LooksTable} {
		if _, err := chdbtest.Compare(ctx, old, modern, fmt.Sprintf("SELECT * FROM %s.%s", db, tbl)); err != nil {
			t.Error(err)
		}
	}
}

func TestMeasureGivesTheSameMeasurementsOnAModernServer(t *testing.T) {
	s := writeTraffic(t)
	ctx := context.Background()
	old, modern := chsource.New(s.old, s.db), chsource.New(s.modern, s.db)
	old.KeepValues, modern.KeepValues = true, true
	windows := map[string]analyzer.Window{
		"first stage": {RolloutFrom: s.start, From: s.start, To: s.start.Add(10 * time.Minute)},
		// Bounds inside a second: the millisecond filter decides, not ts.
		"second stage, odd milliseconds, per-user baselines": {RolloutFrom: s.start, From: s.start.Add(10*time.Minute + 321*time.Millisecond),
			To: s.start.Add(20*time.Minute - 123*time.Millisecond), BaselineFrom: s.start.Add(-time.Hour)},
	}
	for name, w := range windows {
		t.Run(name, func(t *testing.T) {
			w.Model, w.Stable, w.Canary, w.TailQuantile = model, "v1", "v2", 0.99
			want, err := old.Measure(ctx, w)
			if err != nil {
				t.Fatal(err)
			}
			if want.Canary.Requests < 100 || want.Stable.Requests < 100 {
				t.Fatalf("too few requests to compare: canary %d, stable %d", want.Canary.Requests, want.Stable.Requests)
			}
			got, err := modern.Measure(ctx, w)
			if err != nil {
				t.Fatal(err)
			}
			if d := differences(reflect.ValueOf(want), reflect.ValueOf(got), "Measurements"); len(d) > 0 {
				t.Errorf("the modern server measures differently:\n%s", strings.Join(d, "\n"))
			}
			wmOld, err := old.Watermark(ctx, w)
			if err != nil {
				t.Fatal(err)
			}
			if wmNew, err := modern.Watermark(ctx, w); err != nil || wmNew != wmOld {
				t.Errorf("watermark %q (%v) on the modern server, %q on 18.16", wmNew, err, wmOld)
			}
		})
	}
}

func TestRolloutReportReadsTheSameOnAModernServer(t *testing.T) {
	s := writeTraffic(t)
	ctx := context.Background()
	now := s.start.Add(20 * time.Minute)
	want, err := report.Load(ctx, s.old, s.db, s.rollout, now)
	if err != nil || len(want.Missing) > 0 {
		t.Fatalf("18.16: %v, missing %v", err, want.Missing)
	}
	if len(want.Looks) != 6 || len(want.Worst) == 0 || want.Latency["v2"].Count == 0 || len(want.Preflight) != 2 || want.Preflight[1].Requests != 12 || want.Preflight[1].Failures != 1 {
		t.Fatalf("too little read on 18.16 to compare: %d looks, %d worst answers, latency %+v, pre-flight %+v", len(want.Looks), len(want.Worst), want.Latency, want.Preflight)
	}
	got, err := report.Load(ctx, s.modern, s.db, s.rollout, now)
	if err != nil || len(got.Missing) > 0 {
		t.Fatalf("modern: %v, missing %v", err, got.Missing)
	}
	if d := differences(reflect.ValueOf(want), reflect.ValueOf(got), "Data"); len(d) > 0 {
		t.Errorf("the report reads differently from the modern server:\n%s", strings.Join(d, "\n"))
	}
}

// The judge grades the captures nobody scored yet, and feedback rates a
// request once: on both servers the same requests get the same scores.
func TestJudgeAndFeedbackStoreTheSameScoresOnAModernServer(t *testing.T) {
	s := writeTraffic(t)
	ctx := context.Background()
	judgeSim, err := sim.New(sim.Profile{Version: "judge", Judge: true})
	if err != nil {
		t.Fatal(err)
	}
	judgeSrv := httptest.NewServer(judgeSim)
	t.Cleanup(judgeSrv.Close)
	for name, conn := range map[string]driver.Conn{"18.16": s.old, "modern": s.modern} {
		store, err := quality.OpenScoreStore(ctx, conn, s.db)
		if err != nil {
			t.Fatal(err)
		}
		j, err := quality.NewJudge(quality.JudgeOptions{Conn: conn, Database: s.db, Store: store, Endpoint: judgeSrv.URL, BatchSize: 500,
			Lookback: 3 * time.Hour, Concurrency: 4, HTTP: &http.Client{Timeout: 10 * time.Second}})
		if err != nil {
			t.Fatal(err)
		}
		total := 0
		for {
			n, err := j.RunOnce(ctx)
			if err != nil {
				t.Fatalf("%s: judge: %v", name, err)
			}
			if n == 0 {
				break
			}
			total += n
		}
		if total < 100 {
			t.Fatalf("%s: the judge graded %d captures, want the unscored half of them", name, total)
		}
		h := store.FeedbackHandler()
		for _, c := range []struct {
			body string
			code int
		}{
			{`{"request_id": "r-04000", "rating": "up"}`, http.StatusOK},
			{`{"request_id": "r-04000", "rating": "down"}`, http.StatusConflict},
			{`{"request_id": "no-such-request", "rating": "up"}`, http.StatusNotFound},
		} {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/feedback", strings.NewReader(c.body)))
			if rec.Code/100 != c.code/100 || (c.code != http.StatusOK && rec.Code != c.code) {
				t.Errorf("%s: feedback %s answered %d %s, want %d", name, c.body, rec.Code, rec.Body, c.code)
			}
		}
	}
	q := fmt.Sprintf("SELECT request_id, ts_ms, model, version, score, source, forced FROM %s.%s", s.db, quality.Table)
	n, err := chdbtest.Compare(ctx, s.old, s.modern, q)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d scores alike", n)
}

// differences lists where got differs from want: floats by more than a
// relative 1e-9 (sums over rows in another order), anything else at all.
func differences(want, got reflect.Value, path string) []string {
	if want.Kind() != got.Kind() || want.Type() != got.Type() {
		return []string{fmt.Sprintf("%s: %s, want %s", path, got.Type(), want.Type())}
	}
	var out []string
	switch want.Kind() {
	case reflect.Float32, reflect.Float64:
		a, b := want.Float(), got.Float()
		if !(a == b || (math.IsNaN(a) && math.IsNaN(b)) || math.Abs(a-b) <= 1e-9*math.Max(math.Abs(a), math.Abs(b))) {
			out = append(out, fmt.Sprintf("%s = %v, want %v", path, b, a))
		}
	case reflect.Pointer, reflect.Interface:
		if want.IsNil() || got.IsNil() {
			if want.IsNil() != got.IsNil() {
				out = append(out, fmt.Sprintf("%s: nil %v, want nil %v", path, got.IsNil(), want.IsNil()))
			}
			return out
		}
		return differences(want.Elem(), got.Elem(), path)
	case reflect.Struct:
		if t, ok := want.Interface().(time.Time); ok {
			if u := got.Interface().(time.Time); !t.Equal(u) {
				out = append(out, fmt.Sprintf("%s = %v, want %v", path, u, t))
			}
			return out
		}
		for i := range want.NumField() {
			if want.Type().Field(i).IsExported() {
				out = append(out, differences(want.Field(i), got.Field(i), path+"."+want.Type().Field(i).Name)...)
			}
		}
	case reflect.Slice, reflect.Array:
		if want.Len() != got.Len() {
			return []string{fmt.Sprintf("%s: %d elements, want %d", path, got.Len(), want.Len())}
		}
		for i := range want.Len() {
			out = append(out, differences(want.Index(i), got.Index(i), fmt.Sprintf("%s[%d]", path, i))...)
		}
	case reflect.Map:
		if want.Len() != got.Len() {
			return []string{fmt.Sprintf("%s: %d keys, want %d", path, got.Len(), want.Len())}
		}
		for _, k := range want.MapKeys() {
			g := got.MapIndex(k)
			if !g.IsValid() {
				out = append(out, fmt.Sprintf("%s[%v] missing", path, k))
				continue
			}
			out = append(out, differences(want.MapIndex(k), g, fmt.Sprintf("%s[%v]", path, k))...)
		}
	default:
		if !reflect.DeepEqual(want.Interface(), got.Interface()) {
			out = append(out, fmt.Sprintf("%s = %v, want %v", path, got.Interface(), want.Interface()))
		}
	}
	if len(out) > 20 {
		out = append(out[:20], fmt.Sprintf("… %d more", len(out)-20))
	}
	return out
}

// A shadow stage's pairs on 18.16 and on a modern server over the same
// rows: 300 user requests served by v1, each mirrored to v2, which answers
// every third badly and more slowly. The shadow judge grades the pairs on
// each server, and ShadowPairs reads the same counts and moments.
func TestShadowPairsReadTheSameOnAModernServer(t *testing.T) {
	ctx := context.Background()
	ch := chtest.Shared(t)
	db := chtest.NewDatabase()
	old, modern := chtest.Connect(t, ch), chdbtest.Start(t)
	now := time.Now().UTC().Truncate(time.Second)
	from := now.Add(-10 * time.Minute)
	var recs []extproc.Record
	for i := range 300 {
		at := from.Add(time.Duration(i)*1700*time.Millisecond + 123*time.Millisecond)
		user := extproc.Record{Time: at, RequestID: fmt.Sprintf("s-%04d", i), Model: model, Version: "v1", Cluster: model + "_v1",
			Path: "/v1/chat/completions", Bucket: uint64(i * 7919), Status: 200, Streamed: true, TotalMs: 400 + float64(i%40),
			TTFTMs: 90, CompletionTokens: 30, FinishReason: "stop", SampleRate: 1,
			Captured: true, Prompt: "Where is the Eiffel Tower?", Completion: "It is in Paris, France."}
		mirror := user
		mirror.Time, mirror.Version, mirror.Cluster, mirror.Shadow = at.Add(2*time.Millisecond), "v2", model+"_v2", true
		mirror.TotalMs, mirror.Captured = 550+float64(i%60), false
		if i%3 == 0 {
			mirror.Completion = "Sure! " + sim.BadAnswerMarker
		}
		recs = append(recs, user, mirror)
	}
	chwritertest.WriteRecords(t, ch, db, recs)
	if _, err := modernch.Mirror(ctx, old, modern, db); err != nil {
		t.Fatal(err)
	}
	judgeSim, err := sim.New(sim.Profile{Version: "judge", Judge: true})
	if err != nil {
		t.Fatal(err)
	}
	judgeSrv := httptest.NewServer(judgeSim)
	t.Cleanup(judgeSrv.Close)
	read := func(name string, conn driver.Conn) analyzer.ShadowPairs {
		store, err := quality.OpenScoreStore(ctx, conn, db)
		if err != nil {
			t.Fatal(err)
		}
		j, err := quality.NewJudge(quality.JudgeOptions{Conn: conn, Database: db, Store: store, Endpoint: judgeSrv.URL, BatchSize: 500,
			Concurrency: 4, HTTP: &http.Client{Timeout: 10 * time.Second}})
		if err != nil {
			t.Fatal(err)
		}
		sj, err := quality.NewShadowJudge(ctx, j)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for {
			n, err := sj.RunOnce(ctx)
			if err != nil {
				t.Fatalf("%s: shadow judge: %v", name, err)
			}
			if n == 0 {
				break
			}
		}
		p, err := chsource.New(conn, db).ShadowPairs(ctx, analyzer.ShadowWindow{Model: model, Stable: "v1", Canary: "v2", From: from, To: now})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return p
	}
	want, got := read("18.16", old), read("modern", modern)
	if want.Paired != 300 || want.ScoreN != 300 || want.Losses != 100 {
		t.Fatalf("18.16: %+v; want 300 paired and judged pairs, 100 lost by the canary", want)
	}
	if d := differences(reflect.ValueOf(want), reflect.ValueOf(got), "pairs"); len(d) > 0 {
		t.Fatalf("shadow pairs differ on the modern server:\n%s", strings.Join(d, "\n"))
	}
}
