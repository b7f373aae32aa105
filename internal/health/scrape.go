package health

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strings"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Sample is one series of a scrape: its name, labels and value (a
// counter's or gauge's value, a histogram's count).
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Samples is a parsed /metrics page.
type Samples []Sample

// Scrape fetches url (a /metrics endpoint) and parses the text format
// strictly: a page Prometheus could not read is an error.
func Scrape(ctx context.Context, hc *http.Client, url string) (Samples, error) {
	resp, err := fetch(ctx, hc, url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	var out Samples
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			s := Sample{Name: name, Labels: map[string]string{}}
			for _, l := range m.GetLabel() {
				s.Labels[l.GetName()] = l.GetValue()
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				s.Value = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				s.Value = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				s.Value = float64(m.GetHistogram().GetSampleCount())
			case dto.MetricType_SUMMARY:
				s.Value = float64(m.GetSummary().GetSampleCount())
			default:
				s.Value = m.GetUntyped().GetValue()
			}
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out, nil
}

// Find returns the samples named name whose labels include every
// key=value pair given.
func (ss Samples) Find(name string, labels ...string) Samples {
	var out Samples
next:
	for _, s := range ss {
		if s.Name != name {
			continue
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if s.Labels[labels[i]] != labels[i+1] {
				continue next
			}
		}
		out = append(out, s)
	}
	return out
}

// Sum adds the values of the samples Find returns, and reports whether
// there was any.
func (ss Samples) Sum(name string, labels ...string) (float64, bool) {
	found := ss.Find(name, labels...)
	var sum float64
	for _, s := range found {
		sum += s.Value
	}
	return sum, len(found) > 0
}

// String is name{k="v",…} value.
func (s Sample) String() string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(s.Labels)) {
		parts = append(parts, fmt.Sprintf("%s=%q", k, s.Labels[k]))
	}
	return fmt.Sprintf("%s{%s} %g", s.Name, strings.Join(parts, ","), s.Value)
}

// Lint fetches url (a /metrics endpoint) and returns what Prometheus's
// own linter (promlint: base units, _total on counters only, help text,
// no camelCase) finds wrong with its metric names, one line per problem.
func Lint(ctx context.Context, hc *http.Client, url string) ([]string, error) {
	resp, err := fetch(ctx, hc, url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	problems, err := promlint.New(resp.Body).Lint()
	if err != nil {
		return nil, fmt.Errorf("lint %s: %w", url, err)
	}
	var out []string
	for _, p := range problems {
		out = append(out, p.Metric+": "+p.Text)
	}
	return out, nil
}

// fetch GETs url and returns a 200 answer.
func fetch(ctx context.Context, hc *http.Client, url string) (*http.Response, error) {
	if hc == nil {
		hc = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("scrape %s: status %d", url, resp.StatusCode)
	}
	return resp, nil
}
