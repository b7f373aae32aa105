package extproc

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the service's Prometheus series, labelled by model and
// served version. Latencies are in seconds, as Prometheus prefers.
type metrics struct {
	requests   *prometheus.CounterVec
	failures   *prometheus.CounterVec
	ttft       *prometheus.HistogramVec
	itl        *prometheus.HistogramVec
	prompt     *prometheus.CounterVec
	completion *prometheus.CounterVec
	// gatewayAnswers counts requests no version served (see reachedPool).
	gatewayAnswers *prometheus.CounterVec
	streams        prometheus.Gauge
	cut            prometheus.Counter
	// badSampleRate counts streams whose sample rate was not a decimal
	// in (0, 1]; they are recorded at rate 1.
	badSampleRate prometheus.Counter
	// badPrice counts streams opened with a price that is not a
	// non-negative number; their cost counts that price as zero.
	badPrice prometheus.Counter
	// accessLogEntries counts Envoy's access-log entries, one per request.
	accessLogEntries prometheus.Counter
	// accessLogMalformed counts access-log messages that could not be read.
	accessLogMalformed prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	mv := []string{"model", "version"}
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "llmcanary", Subsystem: "extproc", Name: "requests_total",
			Help: "Requests measured, by model and served version.",
		}, mv),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "llmcanary", Subsystem: "extproc", Name: "failures_total",
			Help: "Failed requests by model, served version and failure kind.",
		}, append(mv, "kind")),
		ttft: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "llmcanary", Subsystem: "extproc", Name: "ttft_seconds",
			Help:    "Time from request start to the first content token.",
			Buckets: prometheus.ExponentialBuckets(0.01, 1.6, 18),
		}, mv),
		itl: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "llmcanary", Subsystem: "extproc", Name: "itl_mean_seconds",
			Help:    "Mean inter-token latency of a streamed response (one observation per request).",
			Buckets: prometheus.ExponentialBuckets(0.001, 1.6, 18),
		}, mv),
		prompt: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "llmcanary", Subsystem: "extproc", Name: "prompt_tokens_total",
			Help: "Prompt tokens reported by the servers.",
		}, mv),
		completion: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "llmcanary", Subsystem: "extproc", Name: "completion_tokens_total",
			Help: "Completion tokens, from usage when reported else counted.",
		}, mv),
		gatewayAnswers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "llmcanary", Subsystem: "extproc", Name: "gateway_answers_total",
			Help: "Requests the gateway answered itself (no version served them; not recorded as rows), by status.",
		}, []string{"status"}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "llmcanary", Subsystem: "extproc", Name: "streams_open",
			Help: "ext_proc streams Envoy currently holds open to the service.",
		}),
		cut: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "llmcanary", Subsystem: "extproc", Name: "streams_cut_total",
			Help: "Streams a shutdown cut when its drain bound passed; each was recorded as client_cancel with what was seen.",
		}),
		badSampleRate: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "llmcanary", Subsystem: "extproc", Name: "sample_rate_invalid_total",
			Help: "Streams opened with a sample rate that is not a decimal in (0, 1] (a misconfigured route); they are recorded at rate 1.",
		}),
		badPrice: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "llmcanary", Subsystem: "extproc", Name: "price_invalid_total",
			Help: "Streams opened with a price that is not a non-negative number (a misconfigured route); their cost counts that price as zero.",
		}),
		accessLogEntries: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "llmcanary", Subsystem: "extproc", Name: "access_log_entries_total",
			Help: "Entries of Envoy's gRPC access log received, one per request through Envoy.",
		}),
		accessLogMalformed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "llmcanary", Subsystem: "extproc", Name: "access_log_malformed_total",
			Help: "Access-log messages that were not valid protobuf; their entries are lost.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	var errs []error
	for _, c := range []prometheus.Collector{m.requests, m.failures, m.ttft, m.itl, m.prompt, m.completion, m.gatewayAnswers, m.streams, m.cut, m.badSampleRate, m.badPrice, m.accessLogEntries, m.accessLogMalformed} {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	return m, nil
}

func (m *metrics) observe(r *Record) {
	mv := []string{r.Model, r.Version}
	m.requests.WithLabelValues(mv...).Inc()
	if r.Failure != "" {
		m.failures.WithLabelValues(r.Model, r.Version, r.Failure).Inc()
	}
	if r.CompletionTokens > 0 && r.TTFTMs > 0 {
		m.ttft.WithLabelValues(mv...).Observe(r.TTFTMs / 1000)
	}
	if r.Streamed && r.CompletionTokens > 1 && r.ITLMeanMs > 0 {
		m.itl.WithLabelValues(mv...).Observe(r.ITLMeanMs / 1000)
	}
	m.prompt.WithLabelValues(mv...).Add(float64(r.PromptTokens))
	m.completion.WithLabelValues(mv...).Add(float64(r.CompletionTokens))
}
