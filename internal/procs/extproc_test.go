package procs

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// A hand-written Prometheus text page stands in for the service's
// /metrics: the parsing is what is tested.
const metricsPage = `# HELP llmcanary_extproc_requests_total Requests measured, by model and served version.
# TYPE llmcanary_extproc_requests_total counter
llmcanary_extproc_requests_total{model="m",version="v1"} 7
llmcanary_extproc_requests_total{model="m",version="v 2"} 3
llmcanary_extproc_streams_open 0
llmcanary_telemetry_written_total 1.5e+06
`

func TestMetricsSumEachSeriesOverItsLabelSetsEvenWithSpacesInLabelValues(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(metricsPage))
	}))
	defer srv.Close()
	e := &Extproc{MetricsAddr: strings.TrimPrefix(srv.URL, "http://")}
	got, err := e.Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{
		"llmcanary_extproc_requests_total":  10,
		"llmcanary_extproc_streams_open":    0,
		"llmcanary_telemetry_written_total": 1.5e6,
	}
	if len(got) != len(want) {
		t.Errorf("got %d series %v, want %v", len(got), got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if _, err := e.Metric(context.Background(), "llmcanary_extproc_cut_total"); err == nil || !strings.Contains(err.Error(), "not exported") {
		t.Errorf("a missing series: err %v, want one saying it is not exported", err)
	}
}
