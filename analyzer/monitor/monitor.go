// Package monitor exports the analyzer to Prometheus: rollouts by state,
// decisions by kind, how long each look's measurement takes, the canary's
// current weight per model, and each running rollout's latest effect and
// always-valid interval per metric. Gauges are read from the rollout store
// at each scrape, so they always agree with the rollout API.
package monitor

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmcanary/llmcanary/analyzer"
)

// Lister is the rollout store as the monitor reads it at each scrape
// (analyzer.RolloutStore, analyzer.EtcdStore).
type Lister interface {
	List() ([]*analyzer.Rollout, error)
}

// Monitor holds the analyzer's metrics. Changed is an
// analyzer.Store OnChange watcher; Source wraps the runner's
// MetricsSource. Safe for concurrent use.
type Monitor struct {
	store     Lister
	decisions *prometheus.CounterVec
	looks     *prometheus.HistogramVec

	rollouts, weight, effect, lower, upper, tolerance *prometheus.Desc
}

// statuses are every rollout status, exported even at zero so that a
// dashboard's "running" panel reads 0, not "no data".
var statuses = []analyzer.Status{analyzer.RolloutRunning, analyzer.RolloutPaused, analyzer.RolloutPromoted, analyzer.RolloutRolledBack, analyzer.RolloutAborted}

// New registers the analyzer's metrics on reg.
func New(store Lister, reg prometheus.Registerer) (*Monitor, error) {
	name := func(n string) string { return prometheus.BuildFQName("llmcanary", "analyzer", n) }
	m := &Monitor{
		store: store,
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: name("decisions_total"),
			Help: "Decisions taken at the looks at running rollouts, by action (hold, advance, promote, rollback, pause) and code.",
		}, []string{"model", "action", "code"}),
		looks: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    name("evaluation_seconds"),
			Help:    "Time one look takes to measure a rollout's window in ClickHouse (the decision on it takes microseconds), by outcome: ok, no_data, error.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}, []string{"model", "outcome"}),
		rollouts: prometheus.NewDesc(name("rollouts"), "Rollouts by state.", []string{"state"}, nil),
		weight: prometheus.NewDesc(name("canary_weight_percent"),
			"Canary's share of traffic set by each model's latest rollout: its stage's weight while it runs or is paused, 100 once promoted, 0 once rolled back or aborted.",
			[]string{"model", "rollout", "stable", "canary", "state"}, nil),
		effect: prometheus.NewDesc(name("metric_effect"),
			"Latest effect of a running rollout's canary against stable per metric, in the metric's kind: relative (ratio - 1), points (rate difference) or score (difference).",
			[]string{"model", "rollout", "metric", "kind", "status"}, nil),
		lower: prometheus.NewDesc(name("metric_interval_lower"), "Lower bound of the latest always-valid interval of the effect (absent while unbounded).",
			[]string{"model", "rollout", "metric"}, nil),
		upper: prometheus.NewDesc(name("metric_interval_upper"), "Upper bound of the latest always-valid interval of the effect (absent while unbounded).",
			[]string{"model", "rollout", "metric"}, nil),
		tolerance: prometheus.NewDesc(name("metric_tolerance"), "Tolerance the effect is held to, in the metric's kind.",
			[]string{"model", "rollout", "metric"}, nil),
	}
	for _, c := range []prometheus.Collector{m.decisions, m.looks, (*storeCollector)(m)} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("analyzer metrics: %w", err)
		}
	}
	return m, nil
}

// Changed counts the decision a persisted change carries: a rollout's
// Last decision that is new since before.
func (m *Monitor) Changed(before, after *analyzer.Rollout) {
	if d := analyzer.NewDecision(before, after); d != nil {
		m.decisions.WithLabelValues(after.Model, string(d.Action), string(d.Code)).Inc()
	}
}

// Source returns src with every Measure timed. It keeps src's Watermarker,
// so the runner still looks only when new data arrived.
func (m *Monitor) Source(src analyzer.MetricsSource) analyzer.MetricsSource {
	return timedSource{src: src, looks: m.looks}
}

type timedSource struct {
	src   analyzer.MetricsSource
	looks *prometheus.HistogramVec
}

var (
	_ analyzer.MetricsSource = timedSource{}
	_ analyzer.Watermarker   = timedSource{}
)

// errNoWatermark tells the runner to look every time, as it does for a
// source without watermarks.
var errNoWatermark = errors.New("the source keeps no watermark")

func (s timedSource) Measure(ctx context.Context, w analyzer.Window) (analyzer.Measurements, error) {
	start := time.Now()
	ms, err := s.src.Measure(ctx, w)
	outcome := "ok"
	switch {
	case errors.Is(err, analyzer.ErrNoData):
		outcome = "no_data"
	case err != nil:
		outcome = "error"
	}
	s.looks.WithLabelValues(w.Model, outcome).Observe(time.Since(start).Seconds())
	return ms, err
}

func (s timedSource) Watermark(ctx context.Context, w analyzer.Window) (string, error) {
	if wm, ok := s.src.(analyzer.Watermarker); ok {
		return wm.Watermark(ctx, w)
	}
	return "", errNoWatermark
}

// storeCollector reads the gauges from the store at each scrape.
type storeCollector Monitor

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.rollouts, c.weight, c.effect, c.lower, c.upper, c.tolerance} {
		ch <- d
	}
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	all, err := c.store.List()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.rollouts, err)
		return
	}
	count := map[analyzer.Status]int{}
	latest := map[string]bool{}
	for _, r := range all { // newest first
		count[r.Status]++
		if latest[r.Model] {
			continue
		}
		latest[r.Model] = true
		ch <- prometheus.MustNewConstMetric(c.weight, prometheus.GaugeValue, r.CanaryWeight(), r.Model, r.ID, r.Stable, r.Canary, string(r.Status))
		if !r.Status.Active() || r.Last == nil {
			continue
		}
		for _, x := range r.Last.Metrics {
			if x.Status == analyzer.StatusNotMeasured || x.Status == analyzer.StatusTooFew {
				continue
			}
			metric := string(x.Metric)
			gauge(ch, c.effect, x.Estimate, r.Model, r.ID, metric, string(x.Kind), string(x.Status))
			gauge(ch, c.tolerance, x.Tolerance, r.Model, r.ID, metric)
			if x.CI != nil {
				gauge(ch, c.lower, x.CI.Lo, r.Model, r.ID, metric)
				gauge(ch, c.upper, x.CI.Hi, r.Model, r.ID, metric)
			}
		}
	}
	for _, s := range statuses {
		ch <- prometheus.MustNewConstMetric(c.rollouts, prometheus.GaugeValue, float64(count[s]), string(s))
	}
}

// gauge sends a finite value; an unbounded side of an interval is left out.
func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	if math.IsInf(v, 0) || math.IsNaN(v) {
		return
	}
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}
