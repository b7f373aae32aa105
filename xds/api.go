package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/llmcanary/llmcanary/internal/httpapi"
)

// Store is the desired state as the control plane consumes it: the API
// changes it, the metrics and readiness checks read it, and the control
// plane publishes what other writers make current. StateStore (a local
// file, the default) and EtcdStore (etcd, shared by replicas) implement it;
// both are safe for concurrent use.
type Store interface {
	// State returns a copy of the current state.
	State() *State
	// Update applies change to a copy of the current state, validates it,
	// calls prepare with it (translate and validate every resource) and
	// only then writes it with the next revision and calls the publish
	// function prepare returned, in revision order. A non-zero expect that
	// is not the current revision fails with ErrRevisionChanged. change
	// may be called more than once (a write lost to another replica is
	// retried against the newer state), so it must only edit its argument.
	Update(expect uint64, actor, summary string, change func(*State) error, prepare func(*State) (func() error, error)) (*State, error)
	// Changes returns the audit trail, oldest first.
	Changes() ([]Change, error)
	// Follow has publish called, in revision order and never at the same
	// time as an Update's publish, with every state another writer makes
	// current, until ctx ends. It returns at once.
	Follow(ctx context.Context, publish func(*State) error)
}

var (
	_ Store = (*StateStore)(nil)
	_ Store = (*EtcdStore)(nil)
)

// API is the management API: HTTP/JSON, every /v1 call authorised by a
// bearer token. It is documented in xds/openapi.yaml. Every change goes
// through Store.Update, so it is validated, versioned, durable and
// published, or rejected with nothing changed.
type API struct {
	store   Store
	pub     *Publisher
	token   []byte
	log     *slog.Logger
	maxBody int64
}

// NewAPI returns the management API. token must not be empty.
func NewAPI(store Store, pub *Publisher, token string, log *slog.Logger) *API {
	if log == nil {
		log = slog.Default()
	}
	return &API{store: store, pub: pub, token: []byte(token), log: log, maxBody: 1 << 20}
}

// WeightsRequest sets a model's weights atomically, and optionally which
// version is stable.
type WeightsRequest struct {
	Weights map[string]float64 `json:"weights"`
	Stable  string             `json:"stable,omitempty"`
	// Cause says why (the analyzer's rollout and decision); it is kept
	// in the model's history when the stable version changes.
	Cause
}

// ErrorBody is every error response's body.
type ErrorBody = httpapi.ErrorBody

// Handler returns the API's HTTP handler.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "revision": a.store.State().Revision, "published": a.pub.Published()})
	})
	mux.HandleFunc("GET /v1/state", a.auth(a.getState))
	mux.HandleFunc("GET /v1/changes", a.auth(a.getChanges))
	mux.HandleFunc("GET /v1/fleet", a.auth(a.getFleet))
	mux.HandleFunc("GET /v1/models", a.auth(a.listModels))
	mux.HandleFunc("GET /v1/models/{model}", a.auth(a.getModel))
	mux.HandleFunc("PUT /v1/models/{model}", a.auth(a.putModel))
	mux.HandleFunc("DELETE /v1/models/{model}", a.auth(a.deleteModel))
	mux.HandleFunc("PUT /v1/models/{model}/versions/{version}", a.auth(a.putVersion))
	mux.HandleFunc("DELETE /v1/models/{model}/versions/{version}", a.auth(a.deleteVersion))
	mux.HandleFunc("PUT /v1/models/{model}/weights", a.auth(a.putWeights))
	mux.HandleFunc("PUT /v1/models/{model}/cohorts", a.auth(a.putCohorts))
	mux.HandleFunc("GET /v1/models/{model}/history", a.auth(a.getHistory))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return mux
}

func (a *API) auth(h http.HandlerFunc) http.HandlerFunc { return httpapi.Bearer(a.token, h) }

func (a *API) getState(w http.ResponseWriter, r *http.Request) {
	st := a.store.State()
	w.Header().Set("ETag", etag(st.Revision))
	writeJSON(w, http.StatusOK, st)
}

func (a *API) getFleet(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, FleetStatus{Revision: a.store.State().Revision, Nodes: a.pub.Fleet().Nodes()})
}

func (a *API) getChanges(w http.ResponseWriter, r *http.Request) {
	cs, err := a.store.Changes()
	if errors.Is(err, ErrUnavailable) {
		writeError(w, http.StatusServiceUnavailable, "unavailable", err.Error())
		return
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, "internal", err.Error())
		return
	}
	if cs == nil {
		cs = []Change{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"changes": cs})
}

func (a *API) listModels(w http.ResponseWriter, r *http.Request) {
	st := a.store.State()
	out := make([]*Model, 0, len(st.Models))
	for _, n := range st.ModelNames() {
		out = append(out, st.Models[n])
	}
	w.Header().Set("ETag", etag(st.Revision))
	writeJSON(w, http.StatusOK, map[string]any{"revision": st.Revision, "models": out})
}

// readModel returns the state and the model the path names, or answers
// 404 and returns false.
func (a *API) readModel(w http.ResponseWriter, r *http.Request) (*State, *Model, bool) {
	st := a.store.State()
	m, ok := st.Models[r.PathValue("model")]
	if !ok {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("model %q does not exist", r.PathValue("model")))
		return nil, nil, false
	}
	w.Header().Set("ETag", etag(st.Revision))
	return st, m, true
}

func (a *API) getModel(w http.ResponseWriter, r *http.Request) {
	if _, m, ok := a.readModel(w, r); ok {
		writeJSON(w, http.StatusOK, a.withSampling(m))
	}
}

// withSampling returns a copy of m that says how its traffic is measured.
func (a *API) withSampling(m *Model) *Model {
	c := m.clone()
	c.Sampling = a.pub.Sampling(m)
	return c
}

func (a *API) putModel(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("model")
	var m Model
	if !a.decode(w, r, &m) {
		return
	}
	if m.Name == "" {
		m.Name = name
	}
	m.Sampling = nil
	a.update(w, r, fmt.Sprintf("put model %s", name), func(s *State) error { return s.PutModel(name, m) }, name)
}

func (a *API) deleteModel(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("model")
	a.update(w, r, fmt.Sprintf("delete model %s", name), func(s *State) error { return s.DeleteModel(name) }, "")
}

func (a *API) putVersion(w http.ResponseWriter, r *http.Request) {
	model, version := r.PathValue("model"), r.PathValue("version")
	var v Version
	if !a.decode(w, r, &v) {
		return
	}
	if v.Name == "" {
		v.Name = version
	}
	a.update(w, r, fmt.Sprintf("put version %s/%s", model, version), func(s *State) error { return s.PutVersion(model, version, v) }, model)
}

func (a *API) deleteVersion(w http.ResponseWriter, r *http.Request) {
	model, version := r.PathValue("model"), r.PathValue("version")
	a.update(w, r, fmt.Sprintf("delete version %s/%s", model, version), func(s *State) error { return s.DeleteVersion(model, version) }, model)
}

func (a *API) putWeights(w http.ResponseWriter, r *http.Request) {
	model := r.PathValue("model")
	var req WeightsRequest
	if !a.decode(w, r, &req) {
		return
	}
	summary := fmt.Sprintf("set weights of %s to %s", model, formatWeights(req.Weights))
	if req.Rollout != "" {
		summary += " for rollout " + req.Rollout
	}
	a.updateBecause(w, r, summary, req.Cause, func(s *State) error {
		return s.SetWeights(model, req.Weights, req.Stable)
	}, model)
}

func (a *API) putCohorts(w http.ResponseWriter, r *http.Request) {
	model := r.PathValue("model")
	var c Cohorts
	if !a.decode(w, r, &c) {
		return
	}
	a.update(w, r, fmt.Sprintf("set cohorts of %s (opt-in %s; excluded %s)", model, formatMembers(c.OptIn), formatMembers(c.Excluded)),
		func(s *State) error { return s.SetCohorts(model, c) }, model)
}

// HistoryView is a model's stable history as GET .../history answers it.
type HistoryView struct {
	Model   string         `json:"model"`
	Stable  string         `json:"stable"`
	History []StableChange `json:"history"`
}

func (a *API) getHistory(w http.ResponseWriter, r *http.Request) {
	_, m, ok := a.readModel(w, r)
	if !ok {
		return
	}
	h := m.History
	if h == nil {
		h = []StableChange{}
	}
	writeJSON(w, http.StatusOK, HistoryView{Model: m.Name, Stable: m.Stable, History: h})
}

// update runs a change through the store and answers with the changed model
// (or the whole state when model is ""). The revision the client read can be
// given in If-Match; a concurrent change then fails with 412.
func (a *API) update(w http.ResponseWriter, r *http.Request, summary string, change func(*State) error, model string) {
	a.updateBecause(w, r, summary, Cause{}, change, model)
}

// updateBecause is update for a change with a cause: a stable version it
// moves is recorded in the model's history with the cause's rollout and
// reason (the summary when there is no reason).
func (a *API) updateBecause(w http.ResponseWriter, r *http.Request, summary string, cause Cause, change func(*State) error, model string) {
	var expect uint64
	if im := strings.Trim(r.Header.Get("If-Match"), `" `); im != "" {
		n, err := strconv.ParseUint(im, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, "invalid", fmt.Sprintf("If-Match %q is not a revision number", im))
			return
		}
		expect = n
	}
	wait, err := waitParam(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid", err.Error())
		return
	}
	actor := r.Header.Get("X-Llmcanary-Actor")
	if actor == "" {
		actor = "api"
	}
	reason := cause.Reason
	if reason == "" {
		reason = summary
	}
	change = withHistory(change, StableChange{At: time.Now().UTC(), Actor: actor, Rollout: cause.Rollout, Reason: reason})
	st, err := a.store.Update(expect, actor, summary, change, a.pub.Prepare)
	published := err == nil
	if err != nil {
		code, status := "internal", http.StatusInternalServerError
		switch {
		case errors.Is(err, ErrNotFound):
			code, status = "not_found", http.StatusNotFound
		case errors.Is(err, ErrConflict):
			code, status = "conflict", http.StatusConflict
		case errors.Is(err, ErrRevisionChanged):
			code, status = "revision_changed", http.StatusPreconditionFailed
		case errors.Is(err, ErrInvalid):
			code, status = "invalid", http.StatusBadRequest
		case errors.Is(err, ErrUnavailable):
			code, status = "unavailable", http.StatusServiceUnavailable
		}
		if st == nil {
			a.log.Warn("change rejected", "change", summary, "actor", actor, "error", err)
			writeError(w, status, code, err.Error())
			return
		}
		a.log.Error("change saved but not published", "change", summary, "error", err)
	}
	a.log.Info("change accepted", "change", summary, "actor", actor, "revision", st.Revision)
	w.Header().Set("ETag", etag(st.Revision))
	var applied, connected int
	if published {
		applied, connected = a.waitFleet(r.Context(), st.Revision, wait)
	} else {
		connected = len(a.pub.Fleet().Nodes())
	}
	w.Header().Set(HeaderFleetConnected, strconv.Itoa(connected))
	w.Header().Set(HeaderFleetApplied, strconv.Itoa(applied))
	if m, ok := st.Models[model]; ok {
		writeJSON(w, http.StatusOK, a.withSampling(m))
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// The answer to every change says how much of the fleet serves it: a change
// is saved and published when the API answers, but in force only once the
// Envoys have accepted it, and none may be connected (a control plane that
// just restarted, Envoys that cannot reach it).
const (
	// HeaderFleetConnected is the number of connected Envoys taking routes.
	HeaderFleetConnected = "X-Llmcanary-Fleet-Connected"
	// HeaderFleetApplied is how many of them serve the change's revision
	// or a later one.
	HeaderFleetApplied = "X-Llmcanary-Fleet-Applied"
	// MaxWait caps the wait query parameter of a change.
	MaxWait = 30 * time.Second
)

// waitParam reads the optional wait query parameter of a change: how long
// the answer may wait for every connected Envoy to accept it.
func waitParam(r *http.Request) (time.Duration, error) {
	v := r.URL.Query().Get("wait")
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 || d > MaxWait {
		return 0, fmt.Errorf("wait %q is not a duration between 0s and %v", v, MaxWait)
	}
	return d, nil
}

// waitFleet waits up to wait for every connected Envoy (at least one) to
// accept revision rev and returns how many connected Envoys serve it.
func (a *API) waitFleet(ctx context.Context, rev uint64, wait time.Duration) (applied, connected int) {
	deadline := time.Now().Add(wait)
	for {
		nodes := a.pub.Fleet().Nodes()
		applied, connected = 0, len(nodes)
		for _, n := range nodes {
			if n.RouteRevision >= rev {
				applied++
			}
		}
		if (connected > 0 && applied == connected) || !time.Now().Before(deadline) {
			return applied, connected
		}
		select {
		case <-ctx.Done():
			return applied, connected
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (a *API) decode(w http.ResponseWriter, r *http.Request, v any) bool {
	return httpapi.Decode(w, r, v, a.maxBody)
}

func etag(rev uint64) string { return `"` + strconv.FormatUint(rev, 10) + `"` }

var (
	writeJSON  = httpapi.WriteJSON
	writeError = httpapi.WriteError
)

func formatMembers(m CohortMembers) string {
	n := len(m.Identities) + len(m.Cohorts) + len(m.Tenants)
	if n == 0 {
		return "none"
	}
	return fmt.Sprintf("%d identities, cohorts %v, %d tenants", len(m.Identities), m.Cohorts, len(m.Tenants))
}

func formatWeights(ws map[string]float64) string {
	keys := make([]string, 0, len(ws))
	for k := range ws {
		keys = append(keys, k)
	}
	sortStrings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%v%%", k, ws[k])
	}
	return strings.Join(parts, " ")
}
