package health

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// RequestCounter counts an HTTP API's requests by route (the ServeMux
// pattern that matched, so the label stays bounded whatever paths clients
// send), method and status code.
type RequestCounter struct {
	total *prometheus.CounterVec
}

// NewRequestCounter returns the counter <namespace>_<subsystem>_api_requests_total.
func NewRequestCounter(namespace, subsystem, help string) *RequestCounter {
	return &RequestCounter{total: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: subsystem, Name: "api_requests_total", Help: help,
	}, []string{"route", "method", "code"})}
}

// Describe and Collect make RequestCounter a prometheus.Collector.
func (c *RequestCounter) Describe(ch chan<- *prometheus.Desc) { c.total.Describe(ch) }
func (c *RequestCounter) Collect(ch chan<- prometheus.Metric) { c.total.Collect(ch) }

// Wrap counts every request h serves. h is (or ends in) an http.ServeMux:
// the mux records the matched pattern on the request, read here once h
// has answered; an unmatched request counts under route "unmatched".
func (c *RequestCounter) Wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(sw, r)
		route := r.Pattern
		if route == "" || route == "/" {
			route = "unmatched"
		}
		c.total.WithLabelValues(route, r.Method, strconv.Itoa(sw.status)).Inc()
	})
}

type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (s *statusWriter) WriteHeader(code int) {
	if !s.wrote {
		s.status, s.wrote = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	s.wrote = true
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer
// (flushes of streamed answers).
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

var _ prometheus.Collector = (*RequestCounter)(nil)
