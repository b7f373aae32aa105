package report

import (
	_ "embed"
	"errors"
	"fmt"
	"html/template"
	"io"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/analyzer/chsource"
	"github.com/llmcanary/llmcanary/internal/chart"
)

//go:embed report.html.tmpl
var pageTemplate string

var page = template.Must(template.New("report").Funcs(template.FuncMap{
	"dur":     func(d time.Duration) string { return roundDur(d) },
	"time":    func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05 UTC") },
	"clock":   func(t time.Time) string { return t.UTC().Format("15:04:05") },
	"pct":     func(v float64) string { return fmt.Sprintf("%g %%", v) },
	"num":     func(v float64) string { return fmt.Sprintf("%.4g", v) },
	"signed":  func(v float64) string { return fmt.Sprintf("%+.4f", v) },
	"title":   title,
	"add1":    func(i int) int { return i + 1 },
	"lower":   strings.ToLower,
	"inlined": func(s string) template.HTML { return template.HTML(s) }, // SVG made by internal/chart from numbers and escaped labels
}).Parse(pageTemplate))

// Page is a whole report.
type Page struct {
	Title     string
	Generated time.Time
	Rollouts  []Section
}

// Section is one rollout's part of the page, ready to render.
type Section struct {
	Data
	Anchor  string
	Stages  []StageRow
	Weight  string // SVG
	Metrics []MetricChart
	Final   []analyzer.MetricResult
	Latency string // SVG
	TTFT    string // SVG
	Events  []analyzer.Event
	Notes   []string
}

// StageRow is one stage's window.
type StageRow struct {
	Stage    int // 1-based
	Weight   float64
	From, To time.Time
	Duration time.Duration
	Outcome  string
}

// MetricChart is one metric's effect over time.
type MetricChart struct {
	Metric analyzer.Metric
	Kind   analyzer.Kind
	Looks  int
	Last   string // the last look's status
	SVG    string
}

// Write renders the rollouts' data as one self-contained HTML page.
func Write(w io.Writer, title string, rollouts []Data) error {
	if len(rollouts) == 0 {
		return ErrNoRollouts
	}
	p := Page{Title: title, Generated: rollouts[0].Now}
	for _, d := range rollouts {
		if d.Rollout == nil {
			return errors.New("report: a rollout's data has no rollout")
		}
		s, err := section(d)
		if err != nil {
			return fmt.Errorf("report: rollout %s: %w", d.Rollout.ID, err)
		}
		p.Rollouts = append(p.Rollouts, s)
	}
	return page.Execute(w, p)
}

func section(d Data) (Section, error) {
	ro := d.Rollout
	s := Section{Data: d, Anchor: ro.ID, Events: ro.History, Notes: append([]string(nil), d.Missing...)}
	if ro.Last != nil {
		s.Final = ro.Last.Metrics
	}
	s.Stages = stageRows(d)
	begin := ro.Created
	var err error
	marks := stageMarks(s.Stages, begin)
	if s.Weight, err = svg(chart.Chart{
		Title: "Canary weight over time", XLabel: "seconds since the rollout started", YLabel: "canary share of traffic, %",
		Series: []chart.Series{weightSeries(d, begin)}, Marks: marks, YMin: 0, YMax: 100, Height: 240,
	}); err != nil {
		return s, err
	}
	names, by := metricsOf(d.Looks)
	for _, m := range names {
		mc, err := metricChart(m, by[m], begin, marks)
		if err != nil {
			return s, err
		}
		s.Metrics = append(s.Metrics, mc)
	}
	if len(d.Looks) == 0 && !slices.ContainsFunc(d.Missing, func(n string) bool { return strings.Contains(n, "metrics over time") }) {
		s.Notes = append(s.Notes, "no look has been recorded in the decision log for this rollout: the metrics over time are empty (the table below is its last decision)")
	}
	if s.Latency, err = cdfChart("Total response time per version", d.Latency, ro); err != nil {
		return s, err
	}
	if s.TTFT, err = cdfChart("Time to first token per version (streamed answers)", d.TTFT, ro); err != nil {
		return s, err
	}
	return s, nil
}

// svg renders a chart, or "" when it has nothing to draw.
func svg(c chart.Chart) (string, error) {
	out, err := c.SVG()
	if errors.Is(err, chart.ErrEmpty) {
		return "", nil
	}
	return out, err
}

// stageRows are the rollout's stage windows from its schedule: every span
// of a stage's weight, and how it ended.
func stageRows(d Data) []StageRow {
	ro := d.Rollout
	spans := ro.State.Schedule
	if len(spans) == 0 {
		// No look yet: the current stage's window only.
		spans = []analyzer.Span{{Stage: ro.Stage, Weight: ro.CanaryWeight(), From: ro.StageStarted}}
		if ro.Mode == analyzer.ModeABTest {
			spans[0].Weight = ro.Split
		}
	}
	var out []StageRow
	for i, sp := range spans {
		r := StageRow{Stage: sp.Stage + 1, Weight: sp.Weight, From: sp.From, To: sp.To}
		last := i == len(spans)-1
		switch {
		case !last && spans[i+1].Stage > sp.Stage:
			r.Outcome = "advanced"
		case !last:
			r.Outcome = "restarted (resumed)"
		case ro.Status.Active():
			r.Outcome = string(ro.Status)
			r.To = time.Time{}
		default:
			r.Outcome = strings.ReplaceAll(string(ro.Status), "_", " ")
			if r.To.IsZero() {
				r.To = ro.Updated
			}
		}
		end := r.To
		if end.IsZero() {
			end = d.Now
		}
		r.Duration = end.Sub(r.From)
		out = append(out, r)
	}
	return out
}

func stageMarks(rows []StageRow, begin time.Time) []chart.Mark {
	var marks []chart.Mark
	for _, r := range rows {
		marks = append(marks, chart.Mark{X: r.From.Sub(begin).Seconds(), Label: fmt.Sprintf("stage %d: %g %%", r.Stage, r.Weight)})
	}
	return marks
}

// weightSeries is the canary's weight over the rollout: each span's
// weight from its start, and the end (0 after a rollback or abort, 100
// after a promotion).
func weightSeries(d Data, begin time.Time) chart.Series {
	ro := d.Rollout
	s := chart.Series{Name: ro.Canary, Step: true}
	add := func(t time.Time, w float64) {
		s.X, s.Y = append(s.X, t.Sub(begin).Seconds()), append(s.Y, w)
	}
	add(ro.Created, 0)
	for _, r := range stageRows(d) {
		add(r.From, r.Weight)
	}
	if ro.Status.Active() {
		add(d.Now, ro.CanaryWeight())
	} else {
		add(ro.Updated, ro.CanaryWeight())
		add(ro.Updated.Add(time.Duration(float64(ro.Updated.Sub(ro.Created))*0.02)), ro.CanaryWeight())
	}
	return s
}

func unit(k analyzer.Kind) string {
	switch k {
	case analyzer.KindRelative:
		return "canary / stable − 1"
	case analyzer.KindPoints:
		return "canary − stable, rate"
	case analyzer.KindScore:
		return "canary − stable, score"
	}
	return string(k)
}

func metricChart(m analyzer.Metric, looks []chsource.Look, begin time.Time, marks []chart.Mark) (MetricChart, error) {
	mc := MetricChart{Metric: m, Looks: len(looks)}
	est := chart.Series{Name: "effect"}
	band := chart.Band{Name: "always-valid interval"}
	var tol float64
	for _, l := range looks {
		x := l.At.Sub(begin).Seconds()
		est.X, est.Y = append(est.X, x), append(est.Y, l.Estimate)
		band.X, band.Lo, band.Hi = append(band.X, x), append(band.Lo, l.Lower), append(band.Hi, l.Upper)
		mc.Kind, mc.Last, tol = l.Kind, string(l.Status), l.Tolerance
	}
	// The harm side of the tolerance: above for costs, below for a score.
	edge := tol
	if mc.Kind == analyzer.KindScore {
		edge = -tol
	}
	c := chart.Chart{
		Title: fmt.Sprintf("%s: effect and interval at each look", m), XLabel: "seconds since the rollout started", YLabel: unit(mc.Kind),
		Series: []chart.Series{est}, Bands: []chart.Band{band}, Marks: marks,
		Rules:  []chart.Rule{{Y: 0, Label: "no difference"}, {Y: edge, Label: fmt.Sprintf("tolerance %g", tol)}},
		Height: 220, LegendBottom: true,
	}
	// Keep the picture on the decision's scale: intervals of the first
	// looks are wide.
	lo, hi := math.Min(0, edge), math.Max(0, edge)
	for _, v := range est.Y {
		lo, hi = math.Min(lo, v), math.Max(hi, v)
	}
	span := hi - lo
	c.YMin, c.YMax = lo-span, hi+span
	var err error
	mc.SVG, err = svg(c)
	return mc, err
}

func cdfChart(title string, dists map[string]Distribution, ro *analyzer.Rollout) (string, error) {
	versions := make([]string, 0, len(dists))
	for v := range dists {
		versions = append(versions, v)
	}
	// Stable first, so it keeps the first colour in every chart.
	sort.Slice(versions, func(i, j int) bool {
		if (versions[i] == ro.Stable) != (versions[j] == ro.Stable) {
			return versions[i] == ro.Stable
		}
		return versions[i] < versions[j]
	})
	var series []chart.Series
	for _, v := range versions {
		d := dists[v]
		name := fmt.Sprintf("%s (%d requests)", v, d.Count)
		series = append(series, chart.Quantiles(name, d.Levels, d.Values))
	}
	return svg(chart.Chart{Title: title, XLabel: "milliseconds", YLabel: "% of requests at or below",
		Series: series, YMin: 0, YMax: 100, Height: 260, LegendBottom: true})
}

func roundDur(d time.Duration) string {
	switch {
	case d <= 0:
		return "0s"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	default:
		return d.Round(time.Second).String()
	}
}

// title makes a code a phrase: rolled_back → Rolled back.
func title(s string) string {
	s = strings.ReplaceAll(s, "_", " ")
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
