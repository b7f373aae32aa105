// Package health gives every llmcanary service the same three operational
// endpoints: GET /healthz (live: the process serves HTTP), GET /readyz
// (ready: connected to what it needs, each check named in the answer) and
// GET /metrics (Prometheus), and counts an API's requests by route and
// status code.
package health

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Check is one thing a service needs to do its work: ClickHouse for the
// telemetry service and the analyzer, the loaded and published state for
// the control plane. Fn returns nil when it is there; it must honour ctx.
type Check struct {
	Name string
	Fn   func(ctx context.Context) error
}

// Degraded is a check's answer when the service works in a reduced way
// and stays ready: the telemetry service spooling while ClickHouse is
// away. /readyz shows it as "degraded: <reason>" and answers 200.
type Degraded string

func (d Degraded) Error() string { return string(d) }

// CheckTimeout bounds one /readyz answer: a check that hangs (a firewalled
// ClickHouse) makes the service not ready rather than the probe time out.
const CheckTimeout = 2 * time.Second

// Report is the body of /readyz (and /healthz): "ready" or "not_ready",
// and each check's "ok" or error.
type Report struct {
	Status string            `json:"status"`
	Checks map[string]string `json:"checks,omitempty"`
}

// Ready runs every check at once, each bounded by CheckTimeout, and
// reports whether all passed.
func Ready(ctx context.Context, checks []Check) (Report, bool) {
	ctx, cancel := context.WithTimeout(ctx, CheckTimeout)
	defer cancel()
	rep := Report{Status: "ready", Checks: make(map[string]string, len(checks))}
	var mu sync.Mutex
	var wg sync.WaitGroup
	ok := true
	for _, c := range checks {
		wg.Add(1)
		go func(c Check) {
			defer wg.Done()
			err := run(ctx, c)
			mu.Lock()
			defer mu.Unlock()
			var d Degraded
			if errors.As(err, &d) {
				rep.Checks[c.Name] = "degraded: " + d.Error()
				return
			}
			if err != nil {
				rep.Checks[c.Name], ok = err.Error(), false
				return
			}
			rep.Checks[c.Name] = "ok"
		}(c)
	}
	wg.Wait()
	if !ok {
		rep.Status = "not_ready"
	}
	return rep, ok
}

// run calls c.Fn, giving up when ctx ends even if Fn does not.
func run(ctx context.Context, c Check) error {
	done := make(chan error, 1)
	go func() { done <- c.Fn(ctx) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ReadyHandler answers /readyz: 200 with every check "ok", else 503 with
// each failing check's error.
func ReadyHandler(checks ...Check) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rep, ok := Ready(r.Context(), checks)
		status := http.StatusOK
		if !ok {
			status = http.StatusServiceUnavailable
		}
		writeJSON(w, status, rep)
	}
}

// LiveHandler answers /healthz: 200 while the process serves HTTP.
// Liveness checks nothing else on purpose: a ClickHouse outage must not
// make an orchestrator restart a service that is spooling through it.
func LiveHandler(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, Report{Status: "ok"})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// NewRegistry returns a Prometheus registry with the Go runtime and
// process collectors, the base of every service's /metrics.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// The routes Mount adds.
const (
	RouteLive    = "GET /healthz"
	RouteReady   = "GET /readyz"
	RouteMetrics = "GET /metrics"
)

// Mount adds GET /healthz (unless the mux serves its own), GET /readyz
// and GET /metrics to mux. None needs a token: probes and Prometheus
// scrape them.
func Mount(mux *http.ServeMux, reg prometheus.Gatherer, live bool, checks ...Check) {
	if live {
		mux.HandleFunc(RouteLive, LiveHandler)
	}
	mux.HandleFunc(RouteReady, ReadyHandler(checks...))
	mux.Handle(RouteMetrics, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
}

// Names returns the checks' names, sorted (for logs).
func Names(checks []Check) []string {
	out := make([]string, len(checks))
	for i, c := range checks {
		out[i] = c.Name
	}
	sort.Strings(out)
	return out
}

// Beside returns a handler that serves GET /readyz and GET /metrics (and
// GET /healthz when live is set) and sends every other request to api,
// counted by requests when it is not nil (register it on reg first).
func Beside(api http.Handler, reg prometheus.Gatherer, requests *RequestCounter, live bool, checks ...Check) http.Handler {
	mux := http.NewServeMux()
	Mount(mux, reg, live, checks...)
	if requests != nil {
		api = requests.Wrap(api)
	}
	mux.Handle("/", api)
	return mux
}
