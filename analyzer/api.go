package analyzer

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/llmcanary/llmcanary/internal/httpapi"
)

// API is the rollout API: HTTP/JSON, every /v1 call authorised by a bearer
// token, errors as {"error": {"code", "message"}} like the control plane's
// management API.
//
//	POST /v1/rollouts                  start (StartRequest); mode abtest for an A/B test
//	POST /v1/experiments               start an A/B test (StartRequest, mode implied)
//	GET  /v1/rollouts                  list
//	GET  /v1/rollouts/{id}             one rollout with its live progress
//	POST /v1/rollouts/{id}/{op}        pause, resume, promote, rollback, abort
//
// Extra handlers (the quality feedback endpoint, the report) are mounted
// with Mount. Everything is documented in analyzer/openapi.yaml.
type API struct {
	runner  *Runner
	token   []byte
	log     *slog.Logger
	maxBody int64
	mounts  []mount
}

type mount struct {
	pattern string
	h       http.Handler
}

// NewAPI returns the rollout API. token must not be empty.
func NewAPI(runner *Runner, token string, log *slog.Logger) *API {
	if log == nil {
		log = slog.Default()
	}
	return &API{runner: runner, token: []byte(token), log: log, maxBody: 1 << 20}
}

// Mount adds a handler behind the same bearer token, for example
// Mount("POST /v1/feedback", store.FeedbackHandler()). Call it before
// Handler.
func (a *API) Mount(pattern string, h http.Handler) {
	a.mounts = append(a.mounts, mount{pattern, h})
}

// ErrorBody is every error response's body.
type ErrorBody = httpapi.ErrorBody

// RolloutView is a rollout as the API shows it: the stored rollout and its
// live progress.
type RolloutView struct {
	*Rollout
	Progress Progress `json:"progress"`
}

// OperateRequest is the optional body of an operator action.
type OperateRequest struct {
	Note string `json:"note,omitempty"`
}

// Routes of the handlers the analyzer mounts beside the API's own.
const (
	RouteFeedback = "POST /v1/feedback"
	RouteReport   = "GET /v1/rollouts/{id}/report"
)

// routes are the API's own endpoints, by ServeMux pattern; /healthz alone
// needs no token.
func (a *API) routes() []mount {
	return []mount{
		{"GET /healthz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
		})},
		{"POST /v1/rollouts", a.auth(a.start(false))},
		{"POST /v1/experiments", a.auth(a.start(true))},
		{"GET /v1/rollouts", a.auth(a.list)},
		{"GET /v1/rollouts/{id}", a.auth(a.get)},
		{"POST /v1/rollouts/{id}/{op}", a.auth(a.operate)},
	}
}

// Routes returns the ServeMux patterns Handler serves: the API's own and
// the mounted ones.
func (a *API) Routes() []string {
	var out []string
	for _, m := range a.routes() {
		out = append(out, m.pattern)
	}
	for _, m := range a.mounts {
		out = append(out, m.pattern)
	}
	return out
}

// Handler returns the API's HTTP handler.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	for _, m := range a.routes() {
		mux.Handle(m.pattern, m.h)
	}
	for _, m := range a.mounts {
		mux.Handle(m.pattern, a.auth(m.h.ServeHTTP))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return mux
}

func (a *API) auth(h http.HandlerFunc) http.HandlerFunc { return httpapi.Bearer(a.token, h) }

func (a *API) start(experiment bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req StartRequest
		if !a.decode(w, r, &req) {
			return
		}
		if experiment {
			if req.Mode != "" && req.Mode != ModeABTest {
				writeError(w, http.StatusBadRequest, "invalid", fmt.Sprintf("mode %q: /v1/experiments starts A/B tests only", req.Mode))
				return
			}
			req.Mode = ModeABTest
		}
		req.Actor = r.Header.Get("X-Llmcanary-Actor")
		ro, err := a.runner.Start(r.Context(), req)
		if err != nil {
			a.fail(w, "start rollout", err)
			return
		}
		w.Header().Set("Location", "/v1/rollouts/"+ro.ID)
		writeJSON(w, http.StatusCreated, a.view(ro))
	}
}

func (a *API) list(w http.ResponseWriter, r *http.Request) {
	all, err := a.runner.Store.List()
	if err != nil {
		writeError(w, http.StatusInternalServerError, "internal", err.Error())
		return
	}
	model := r.URL.Query().Get("model")
	out := make([]RolloutView, 0, len(all))
	for _, ro := range all {
		if model != "" && ro.Model != model {
			continue
		}
		// The list is a summary: the history stays on GET /v1/rollouts/{id}.
		ro.History = nil
		out = append(out, a.view(ro))
	}
	writeJSON(w, http.StatusOK, map[string]any{"rollouts": out})
}

func (a *API) get(w http.ResponseWriter, r *http.Request) {
	ro, err := a.runner.Store.Get(r.PathValue("id"))
	if err != nil {
		a.fail(w, "get rollout", err)
		return
	}
	writeJSON(w, http.StatusOK, a.view(ro))
}

func (a *API) operate(w http.ResponseWriter, r *http.Request) {
	op := Operation(r.PathValue("op"))
	switch op {
	case OpPause, OpResume, OpPromote, OpRollback, OpAbort:
	default:
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no such action %q: use pause, resume, promote, rollback or abort", op))
		return
	}
	var req OperateRequest
	if r.ContentLength != 0 {
		if !a.decode(w, r, &req) {
			return
		}
	}
	ro, err := a.runner.Operate(r.Context(), r.PathValue("id"), op, r.Header.Get("X-Llmcanary-Actor"), req.Note)
	if err != nil {
		a.fail(w, string(op), err)
		return
	}
	writeJSON(w, http.StatusOK, a.view(ro))
}

func (a *API) view(ro *Rollout) RolloutView {
	return RolloutView{Rollout: ro, Progress: ro.ProgressAt(a.runner.now())}
}

// HeaderLeader names the leader's rollout API on a standby's refusal of a
// write (503 not_leader).
const HeaderLeader = "X-Llmcanary-Leader"

// fail maps an error to its status: invalid 400, not found 404, conflict
// 409, a control plane that refused or is unreachable 502, a write on a
// standby 503 (not_leader, with the leader's URL in X-Llmcanary-Leader):
// standbys refuse writes rather than forward them, so a caller always
// knows which analyzer acted.
func (a *API) fail(w http.ResponseWriter, what string, err error) {
	code, status := "internal", http.StatusInternalServerError
	var nl *NotLeaderError
	switch {
	case errors.As(err, &nl):
		code, status = "not_leader", http.StatusServiceUnavailable
		if nl.Leader.URL != "" {
			w.Header().Set(HeaderLeader, nl.Leader.URL)
		}
	case errors.Is(err, ErrNotLeader):
		code, status = "not_leader", http.StatusServiceUnavailable
	case errors.Is(err, ErrInvalid):
		code, status = "invalid", http.StatusBadRequest
	case errors.Is(err, ErrNotFound):
		code, status = "not_found", http.StatusNotFound
	case errors.Is(err, ErrConflict):
		code, status = "conflict", http.StatusConflict
	case errors.Is(err, ErrControlPlane):
		code, status = "bad_gateway", http.StatusBadGateway
	}
	a.log.Warn("rollout request failed", "request", what, "error", err)
	writeError(w, status, code, err.Error())
}

func (a *API) decode(w http.ResponseWriter, r *http.Request, v any) bool {
	return httpapi.Decode(w, r, v, a.maxBody)
}

var (
	writeJSON  = httpapi.WriteJSON
	writeError = httpapi.WriteError
)
