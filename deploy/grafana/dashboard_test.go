//go:build integration

// Package grafana_test checks deploy/grafana/llmcanary.json against a real
// ClickHouse (the 18.16 server the project supports, started by the test):
// every ClickHouse query of the dashboard — panels, annotations,
// variables — runs with its macros expanded as the Grafana ClickHouse
// plugin expands them, over demo-like data written by llmcanary's own
// writers, and returns rows with the columns its panel uses.
package grafana_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/analyzer/chsource"
	"github.com/llmcanary/llmcanary/analyzer/quality"
	"github.com/llmcanary/llmcanary/analyzer/stats"
	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/extproc/chwriter/chwritertest"
	"github.com/llmcanary/llmcanary/internal/procs"
	"github.com/llmcanary/llmcanary/internal/procs/chdbtest"
	"github.com/llmcanary/llmcanary/internal/procs/chtest"
	"github.com/llmcanary/llmcanary/internal/procs/modernch"
	"github.com/llmcanary/llmcanary/internal/wire"
)

func TestMain(m *testing.M) { chtest.Main(m) }

const model = "llama-3-8b"

// Dashboard is the part of a Grafana dashboard the test reads.
type Dashboard struct {
	Panels      []Panel `json:"panels"`
	Annotations struct {
		List []struct {
			Name       string     `json:"name"`
			Datasource Datasource `json:"datasource"`
			Target     Target     `json:"target"`
		} `json:"list"`
	} `json:"annotations"`
	Templating struct {
		List []struct {
			Name       string     `json:"name"`
			Type       string     `json:"type"`
			Datasource Datasource `json:"datasource"`
			Query      any        `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type Panel struct {
	Title      string     `json:"title"`
	Type       string     `json:"type"`
	Datasource Datasource `json:"datasource"`
	Targets    []Target   `json:"targets"`
	Panels     []Panel    `json:"panels"`
}

type Datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type Target struct {
	RefID      string     `json:"refId"`
	Datasource Datasource `json:"datasource"`
	QueryType  string     `json:"queryType"`
	// Format is the plugin's result shape (grafana-plugin-sdk-go sqlutil):
	// 0 time series, 1 table.
	Format *int   `json:"format"`
	RawSQL string `json:"rawSql"`
	Expr   string `json:"expr"`
}

const clickhouseType = "grafana-clickhouse-datasource"

// LoadDashboard reads the dashboard file.
func LoadDashboard(t testing.TB) Dashboard {
	t.Helper()
	b, err := os.ReadFile("llmcanary.json")
	if err != nil {
		t.Fatal(err)
	}
	var d Dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("llmcanary.json: %v", err)
	}
	return d
}

// query is one ClickHouse query of the dashboard and the columns its
// panel reads.
type query struct {
	name       string // panel title / refId
	sql        string
	timeSeries bool
	format     *int
}

func clickhouseQueries(d Dashboard) []query {
	var out []query
	var walk func(ps []Panel)
	walk = func(ps []Panel) {
		for _, p := range ps {
			walk(p.Panels)
			for _, tg := range p.Targets {
				ds := tg.Datasource
				if ds.Type == "" {
					ds = p.Datasource
				}
				if ds.Type == clickhouseType {
					out = append(out, query{name: p.Title + " / " + tg.RefID, sql: tg.RawSQL, timeSeries: tg.QueryType == "timeSeries", format: tg.Format})
				}
			}
		}
	}
	walk(d.Panels)
	for _, a := range d.Annotations.List {
		if a.Datasource.Type == clickhouseType {
			out = append(out, query{name: "annotation " + a.Name, sql: a.Target.RawSQL, format: a.Target.Format})
		}
	}
	for _, v := range d.Templating.List {
		if v.Type == "query" && v.Datasource.Type == clickhouseType {
			out = append(out, query{name: "variable " + v.Name, sql: fmt.Sprint(v.Query)})
		}
	}
	return out
}

// wantColumns are the columns each query's panel uses: its time, labels
// and values (a time series), its table columns, an annotation's time,
// text and tags, a variable's values. A query missing here fails the
// test, so that a new panel comes with its check.
var wantColumns = map[string][]string{
	"Canary weight over time / A":                       {"time", "series", "weight"},
	"Canary weight over time / B":                       {"time", "series", "share"},
	"Requests per second per version / A":               {"time", "version", "rps"},
	"Time to first token per version / A":               {"time", "version", "p50", "p95", "p99"},
	"Inter-token latency per version / A":               {"time", "version", "p50", "p95", "p99"},
	"Total latency per version / A":                     {"time", "version", "p50", "p95", "p99"},
	"Error rate per version / A":                        {"time", "version", "error_rate"},
	"Refusal rate per version / A":                      {"time", "version", "refusal_rate"},
	"Quality per version / A":                           {"time", "version", "source", "quality"},
	"Cost per request per version / A":                  {"time", "version", "cost_per_request"},
	"Effect per metric at each look (decision log) / A": {"time", "metric", "effect", "lower", "upper"},
	"Error rate per rollout stage / A":                  {"rollout_id", "stage", "weight", "version", "requests", "error_rate"},
	"Decisions / A":                                     {"time", "rollout_id", "canary", "stage", "weight", "kind", "action", "code", "reason", "actor"},
	"annotation Decisions":                              {"time", "text", "tags"},
	"variable model":                                    {"model"},
}

// expand replaces the dashboard variables and the ClickHouse plugin's
// macros as the plugin does (grafana/clickhouse-datasource pkg/macros):
// times as toDateTime(<unix seconds>), dates as toDate('YYYY-MM-DD').
func expand(sql string, from, to time.Time, interval time.Duration) string {
	sql = strings.NewReplacer("${model}", model, "$model", model).Replace(sql)
	dt := func(t time.Time) string { return fmt.Sprintf("toDateTime(%d)", t.Unix()) }
	d := func(t time.Time) string { return fmt.Sprintf("toDate('%s')", t.UTC().Format("2006-01-02")) }
	macro := regexp.MustCompile(`\$__(\w+)(?:\(([^)]*)\))?`)
	return macro.ReplaceAllStringFunc(sql, func(m string) string {
		parts := macro.FindStringSubmatch(m)
		var args []string
		for _, a := range strings.Split(parts[2], ",") {
			if a = strings.TrimSpace(a); a != "" {
				args = append(args, a)
			}
		}
		switch parts[1] {
		case "fromTime":
			return dt(from)
		case "toTime":
			return dt(to)
		case "timeFilter":
			return fmt.Sprintf("%s >= %s AND %s <= %s", args[0], dt(from), args[0], dt(to))
		case "dateFilter":
			return fmt.Sprintf("%s >= %s AND %s <= %s", args[0], d(from), args[0], d(to))
		case "dateTimeFilter", "dt":
			return fmt.Sprintf("(%s >= %s AND %s <= %s) AND (%s >= %s AND %s <= %s)",
				args[0], d(from), args[0], d(to), args[1], dt(from), args[1], dt(to))
		case "timeInterval":
			return fmt.Sprintf("toStartOfInterval(toDateTime(%s), INTERVAL %d second)", args[0], int(interval.Seconds()))
		case "interval_s":
			return fmt.Sprint(int(interval.Seconds()))
		}
		return m // unknown: left for ClickHouse to reject
	})
}

// withDemoData loads the dashboard and writes the demo data ending now
// into the shared server.
func withDemoData(t *testing.T) (d Dashboard, conn driver.Conn, end time.Time) {
	d = LoadDashboard(t)
	ch := chtest.Shared(t)
	end = time.Now().UTC().Truncate(time.Second)
	writeDemoData(t, ch, end)
	return d, chtest.Connect(t, ch), end
}

func TestEveryClickHouseQueryOfTheDashboardReturnsRowsWithItsColumns(t *testing.T) {
	d, conn, end := withDemoData(t)
	ctx := context.Background()

	queries := clickhouseQueries(d)
	if len(queries) < 10 {
		t.Fatalf("only %d ClickHouse queries found in the dashboard", len(queries))
	}
	seen := map[string]bool{}
	from, to := end.Add(-time.Hour), end.Add(time.Minute)
	for _, q := range queries {
		t.Run(q.name, func(t *testing.T) {
			seen[q.name] = true
			if q.format != nil {
				if want := map[bool]int{true: 0, false: 1}[q.timeSeries]; *q.format != want {
					t.Errorf("format %d, but a %s query needs %d (0 time series, 1 table)", *q.format, map[bool]string{true: "time series", false: "table"}[q.timeSeries], want)
				}
			}
			want, ok := wantColumns[q.name]
			if !ok {
				t.Fatalf("no expected columns for %q: add them to wantColumns", q.name)
			}
			sql := expand(q.sql, from, to, time.Minute)
			if strings.Contains(sql, "$") {
				t.Fatalf("unexpanded variable or macro left in:\n%s", sql)
			}
			cols, types, rows, first := run(t, ctx, conn, sql)
			if rows == 0 {
				t.Fatalf("no rows over demo data:\n%s", sql)
			}
			for _, c := range want {
				if !slices.Contains(cols, c) {
					t.Errorf("column %q missing: the query returns %v", c, cols)
				}
			}
			if q.timeSeries && (cols[0] != "time" || !strings.HasPrefix(types[0], "DateTime")) {
				t.Errorf("a time series query must return its time first as DateTime: %v %v", cols, types)
			}
			t.Logf("%d rows; first: %s", rows, first)
		})
	}
	for name := range wantColumns {
		if !seen[name] {
			t.Errorf("wantColumns names %q, which the dashboard no longer has", name)
		}
	}
}

// TestEveryClickHouseQueryOfTheDashboardAnswersAlikeOnAModernServer runs
// each query over the same demo data on 18.16 and on a current ClickHouse
// engine (chDB) holding the modern schema: the panels read the same
// numbers from either.
func TestEveryClickHouseQueryOfTheDashboardAnswersAlikeOnAModernServer(t *testing.T) {
	d, conn, end := withDemoData(t)
	ctx := context.Background()
	modern := chdbtest.Start(t)
	copied, err := modernch.Mirror(ctx, conn, modern, wire.Database)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rows on both servers: %v", copied)
	from, to := end.Add(-time.Hour), end.Add(time.Minute)
	for _, q := range clickhouseQueries(d) {
		t.Run(q.name, func(t *testing.T) {
			sql := expand(q.sql, from, to, time.Minute)
			n, err := chdbtest.Compare(ctx, conn, modern, sql)
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				t.Fatalf("no rows on 18.16, so nothing is compared:\n%s", sql)
			}
		})
	}
}

// run executes sql and returns its columns, their types, the number of
// rows and the first row, formatted.
func run(t *testing.T, ctx context.Context, conn driver.Conn, sql string) (cols, types []string, n int, first string) {
	t.Helper()
	rows, err := conn.Query(ctx, sql)
	if err != nil {
		t.Fatalf("%v\n%s", err, sql)
	}
	defer rows.Close()
	cols = rows.Columns()
	for _, ct := range rows.ColumnTypes() {
		types = append(types, ct.DatabaseTypeName())
	}
	for rows.Next() {
		vals := make([]any, len(cols))
		for i, ct := range rows.ColumnTypes() {
			vals[i] = newValue(ct.DatabaseTypeName())
		}
		if err := rows.Scan(vals...); err != nil {
			t.Fatalf("scan: %v", err)
		}
		if n == 0 {
			var parts []string
			for i, v := range vals {
				parts = append(parts, fmt.Sprintf("%s=%v", cols[i], deref(v)))
			}
			first = strings.Join(parts, " ")
		}
		n++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return cols, types, n, first
}

func newValue(typ string) any {
	switch {
	case strings.HasPrefix(typ, "DateTime"):
		return new(time.Time)
	case typ == "Date":
		return new(time.Time)
	case typ == "String":
		return new(string)
	case typ == "Float64":
		return new(float64)
	case typ == "UInt64":
		return new(uint64)
	case typ == "UInt32":
		return new(uint32)
	case typ == "UInt16":
		return new(uint16)
	case typ == "UInt8":
		return new(uint8)
	case typ == "Int64":
		return new(int64)
	}
	return new(any)
}

func deref(v any) any {
	switch x := v.(type) {
	case *time.Time:
		return x.UTC().Format(time.TimeOnly)
	case *string:
		if len(*x) > 60 {
			return (*x)[:60] + "…"
		}
		return *x
	case *float64:
		return fmt.Sprintf("%.4g", *x)
	case *uint64:
		return *x
	case *uint32:
		return *x
	case *uint16:
		return *x
	case *uint8:
		return *x
	}
	return v
}

// writeDemoData writes what `make demo` leaves behind, in small: 25
// minutes of streamed traffic from 400 users to a stable and a canary
// version (the canary slower, with more errors and worse answers),
// captured and judged answers, user feedback, the rollout's stage windows
// and its decision log — each with llmcanary's own writer.
func writeDemoData(t *testing.T, ch *procs.ClickHouse, end time.Time) {
	t.Helper()
	ctx := context.Background()
	begin := end.Add(-25 * time.Minute)
	rnd := rand.New(rand.NewPCG(1, 2))
	policy := analyzer.DefaultPolicy()
	policy.Stages = []analyzer.Stage{{Weight: 10}, {Weight: 25}, {Weight: 50}, {Weight: 100}}
	rollout := &analyzer.Rollout{ID: "r-demo-1", Model: model, Stable: "v1", Canary: "v2-ft", Mode: analyzer.ModeCanary,
		Plan: analyzer.Plan{Policy: policy}, Status: analyzer.RolloutRunning, Created: begin, Updated: begin, StageStarted: begin}
	weightAt := func(ts time.Time) (stage int, w float64) {
		switch m := ts.Sub(begin); {
		case m < 8*time.Minute:
			return 0, 10
		case m < 16*time.Minute:
			return 1, 25
		default:
			return 2, 50
		}
	}
	var recs []extproc.Record
	var scores []quality.Score
	for i := range 3000 {
		ts := begin.Add(time.Duration(i) * 500 * time.Millisecond)
		user := rnd.IntN(400)
		_, w := weightAt(ts)
		v, slow, errRate, bad := "v1", 1.0, 0.005, 0.03
		if uint64(user)%100 < uint64(w) {
			v, slow, errRate, bad = "v2-ft", 1.3, 0.02, 0.14
		}
		r := extproc.Record{Time: ts, RequestID: fmt.Sprintf("req-%05d", i), Model: model, Version: v, Cluster: model + "/" + v,
			Path: "/v1/chat/completions", Bucket: uint64(user), Streamed: true, Status: 200,
			TTFTMs: slow * (40 + 60*rnd.Float64()), ITLMeanMs: slow * (4 + 6*rnd.Float64()), PromptTokens: 30, CompletionTokens: uint32(16 + rnd.IntN(24)),
			TokensFromUsage: true, FinishReason: "stop", CostUSD: 0.00004 + 0.00002*rnd.Float64(), Chunks: 30}
		r.TotalMs = r.TTFTMs + float64(r.CompletionTokens)*r.ITLMeanMs
		switch x := rnd.Float64(); {
		case x < errRate:
			r.Status, r.Failure = 500, "http_5xx"
		case x < errRate+0.01:
			r.Refusal = true
		}
		if i%5 == 0 && r.Failure == "" {
			r.Captured, r.Prompt, r.Completion = true, "user: question "+fmt.Sprint(i), "answer "+fmt.Sprint(i)
			s := 0.95
			if rnd.Float64() < bad {
				s = 0.05
			}
			scores = append(scores, quality.Score{Time: ts, RequestID: r.RequestID, Model: model, Version: v, Score: s, Source: quality.SourceJudge})
			if i%25 == 0 {
				scores = append(scores, quality.Score{Time: ts, RequestID: r.RequestID, Model: model, Version: v, Score: s, Source: quality.SourceFeedback})
			}
		}
		recs = append(recs, r)
	}
	chwritertest.WriteRecords(t, ch, wire.Database, recs)

	conn := chtest.Connect(t, ch)
	qs, err := quality.OpenScoreStore(ctx, conn, wire.Database)
	if err != nil {
		t.Fatal(err)
	}
	if err := qs.Write(ctx, scores); err != nil {
		t.Fatal(err)
	}
	stages, err := chsource.NewStageLog(ctx, conn, wire.Database)
	if err != nil {
		t.Fatal(err)
	}
	decisions, err := chsource.NewDecisionLog(ctx, conn, wire.Database, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The rollout as the analyzer would have recorded it: a look every
	// 10 s, an advance at each stage change.
	before := (*analyzer.Rollout)(nil)
	cur := *rollout
	cur.History = []analyzer.Event{{At: begin, Kind: "operator", Code: analyzer.CodeOperator, Actor: "demo", Reason: "started by demo"}}
	decisions.Changed(before, &cur)
	for s := 10 * time.Second; s < 25*time.Minute; s += 10 * time.Second {
		at := begin.Add(s)
		stage, w := weightAt(at)
		next := cur
		next.History = slices.Clone(cur.History)
		action, code := analyzer.ActionHold, analyzer.CodeMinSamples
		if stage != cur.Stage {
			action, code = analyzer.ActionAdvance, analyzer.CodeGuarded
			if err := stages.RecordStage(ctx, analyzer.StageWindow{RolloutID: rollout.ID, Model: model, Stable: "v1", Canary: "v2-ft",
				Stage: cur.Stage, Weight: []float64{10, 25, 50}[cur.Stage], Started: cur.StageStarted, Ended: at, Outcome: "advanced", Updated: at}); err != nil {
				t.Fatal(err)
			}
			next.Stage, next.StageStarted = stage, at
		}
		width := 0.5 / (1 + s.Minutes())
		next.Last = &analyzer.Decision{At: at, Action: action, Code: code, Stage: stage, Weight: w, Metrics: []analyzer.MetricResult{
			{Metric: analyzer.MetricLatency, Kind: analyzer.KindRelative, Status: analyzer.StatusUndecided, Estimate: 0.3, Tolerance: 0.2, CI: &stats.Interval{Lo: 0.3 - width, Hi: 0.3 + width}},
			{Metric: analyzer.MetricErrorRate, Kind: analyzer.KindPoints, Status: analyzer.StatusUndecided, Estimate: 0.015, Tolerance: 0.03, CI: &stats.Interval{Lo: 0.015 - width/10, Hi: 0.015 + width/10}},
		}}
		e := analyzer.Event{At: at, Kind: "decision", Action: action, Code: code, Reason: fmt.Sprintf("%s at %g %%", action, w)}
		if n := len(next.History); action == analyzer.ActionHold && next.History[n-1].Code == code {
			e.Repeats = next.History[n-1].Repeats + 1
			next.History[n-1] = e
		} else {
			next.History = append(next.History, e)
		}
		decisions.Changed(&cur, &next)
		cur = next
	}
	if err := stages.RecordStage(ctx, analyzer.StageWindow{RolloutID: rollout.ID, Model: model, Stable: "v1", Canary: "v2-ft",
		Stage: cur.Stage, Weight: 50, Started: cur.StageStarted, Outcome: "running", Updated: end}); err != nil {
		t.Fatal(err)
	}
	decisions.Flush(ctx)
}
