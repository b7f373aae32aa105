package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/llmcanary/llmcanary/internal/wire"
)

// Headers announcing a request's plan. They are set on every planned
// response; a streamed response sends them before the TTFT wait.
const (
	HeaderTTFTMS           = "x-sim-ttft-ms"           // planned TTFT, ms
	HeaderITLMS            = "x-sim-itl-ms"            // mean planned gap between delivered tokens, ms
	HeaderCompletionTokens = "x-sim-completion-tokens" // token chunks the client will receive
	HeaderPromptTokens     = "x-sim-prompt-tokens"
	HeaderOutcome          = "x-sim-outcome" // an Outcome
)

// maxBodyBytes bounds a request body.
const maxBodyBytes = 16 << 20

// Server is a simulated OpenAI-compatible inference pool shaped like vLLM's
// server. It is an http.Handler, safe for concurrent use.
type Server struct {
	p       Profile
	metrics http.Handler
	reqs    *prometheus.CounterVec
	tokens  prometheus.Counter
}

var _ http.Handler = (*Server)(nil)

// New validates p, applies its defaults and returns a server for it.
func New(p Profile) (*Server, error) {
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("sim profile: %w", err)
	}
	s := &Server{p: p.withDefaults()}
	reg := prometheus.NewRegistry()
	s.reqs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "llmcanary_sim_requests_total",
		Help: "Completion requests by planned outcome.",
	}, []string{"outcome"})
	s.tokens = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "llmcanary_sim_tokens_total",
		Help: "Token chunks sent.",
	})
	reg.MustRegister(s.reqs, s.tokens)
	s.metrics = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	return s, nil
}

// Profile returns the profile in use, defaults applied.
func (s *Server) Profile() Profile { return s.p }

// ServeHTTP routes the vLLM endpoints: POST /v1/chat/completions,
// POST /v1/completions, GET /v1/models, GET /health, GET /metrics.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	w.Header().Set(wire.HeaderServedBy, s.p.Version)
	w.Header().Set(HeaderSawHeaders, sawHeaders(r.Header))
	var method string
	var h func(http.ResponseWriter, *http.Request)
	switch r.URL.Path {
	case "/v1/chat/completions":
		method, h = http.MethodPost, func(w http.ResponseWriter, r *http.Request) { s.complete(w, r, start, true) }
	case "/v1/completions":
		method, h = http.MethodPost, func(w http.ResponseWriter, r *http.Request) { s.complete(w, r, start, false) }
	case "/v1/models":
		method, h = http.MethodGet, s.models
	case "/health":
		method, h = http.MethodGet, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) }
	case "/metrics":
		method, h = http.MethodGet, s.metrics.ServeHTTP
	default:
		writeError(w, http.StatusNotFound, errInvalidRequest, nil, "", "not found: "+r.URL.Path)
		return
	}
	if r.Method != method && !(method == http.MethodGet && r.Method == http.MethodHead) {
		w.Header().Set("allow", method)
		writeError(w, http.StatusMethodNotAllowed, errInvalidRequest, nil, "", "method "+r.Method+" not allowed")
		return
	}
	h(w, r)
}

func (s *Server) models(w http.ResponseWriter, _ *http.Request) {
	type model struct {
		ID      string          `json:"id"`
		Object  string          `json:"object"`
		Created int64           `json:"created"`
		OwnedBy string          `json:"owned_by"`
		Root    string          `json:"root"`
		Parent  json.RawMessage `json:"parent"`
	}
	writeJSON(w, http.StatusOK, struct {
		Object string  `json:"object"`
		Data   []model `json:"data"`
	}{"list", []model{{s.p.Model, "model", time.Now().Unix(), "vllm", s.p.Model, rawNull}}})
}

// parsed is a validated completion request.
type parsed struct {
	req          apiRequest
	maxTokens    int    // 0: no cap
	promptTokens int    // the tokenizer stand-in's count
	text         string // all prompt text, which a judge grades
}

// parse validates a request body the way vLLM does, returning the status and
// OpenAI error to send when it is unacceptable.
func (s *Server) parse(body []byte, chat bool) (parsed, int, *apiErrorBody) {
	bad := func(status int, code any, param, msg string) (parsed, int, *apiErrorBody) {
		e := &apiErrorBody{Message: msg, Type: errInvalidRequest, Code: code}
		if param != "" {
			e.Param = &param
		}
		return parsed{}, status, e
	}
	var out parsed
	if err := json.Unmarshal(body, &out.req); err != nil {
		return bad(http.StatusBadRequest, nil, "", "malformed JSON body: "+err.Error())
	}
	req := &out.req
	if req.Model == "" {
		return bad(http.StatusBadRequest, nil, "model", "missing required field: model")
	}
	if req.Model != s.p.Model {
		return bad(http.StatusNotFound, "model_not_found", "model", fmt.Sprintf("The model `%s` does not exist.", req.Model))
	}
	chars, extra := 0, 0
	if chat {
		if len(req.Messages) == 0 {
			return bad(http.StatusBadRequest, nil, "messages", "missing required field: messages (a non-empty array)")
		}
		var all strings.Builder
		for _, m := range req.Messages {
			t, err := m.text()
			if err != nil {
				return bad(http.StatusBadRequest, nil, "messages", err.Error())
			}
			all.WriteString(t)
			all.WriteByte('\n')
			chars += runeCount(t)
		}
		out.text = all.String()
	} else {
		if len(req.Prompt) == 0 || string(req.Prompt) == "null" {
			return bad(http.StatusBadRequest, nil, "prompt", "missing required field: prompt")
		}
		t, n, err := promptText(req.Prompt)
		if err != nil {
			return bad(http.StatusBadRequest, nil, "prompt", err.Error())
		}
		out.text, chars, extra = t, runeCount(t), n
	}
	out.promptTokens = countPromptTokens(chars, s.p.PromptTokensPerChar) + extra
	limit, param := req.MaxTokens, "max_tokens"
	if chat && req.MaxCompletionTokens != nil {
		limit, param = req.MaxCompletionTokens, "max_completion_tokens"
	}
	if limit != nil {
		if *limit < 1 {
			return bad(http.StatusBadRequest, nil, param, param+" must be at least 1, got "+strconv.Itoa(*limit))
		}
		out.maxTokens = *limit
	}
	return out, 0, nil
}

// planKey identifies a request for MakePlan: its x-request-id when present,
// else its body (which includes the user field).
func planKey(r *http.Request, body []byte) []byte {
	if id := r.Header.Get(wire.HeaderRequestID); id != "" {
		return append([]byte("rid\x00"), id...)
	}
	return append([]byte("body\x00"), body...)
}

// answer is what a request will be sent: its plan and token texts.
type answer struct {
	plan  Plan
	token func(i int) string
}

func (s *Server) complete(w http.ResponseWriter, r *http.Request, start time.Time, chat bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		status := http.StatusBadRequest
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			status = http.StatusRequestEntityTooLarge
		}
		writeError(w, status, errInvalidRequest, nil, "", "read body: "+err.Error())
		return
	}
	in, status, apiErr := s.parse(body, chat)
	if apiErr != nil {
		writeJSON(w, status, apiError{Error: *apiErr})
		return
	}
	plan := MakePlan(s.p, planKey(r, body), in.maxTokens, in.promptTokens)
	a := answer{plan: plan, token: plan.Token}
	if s.p.Judge {
		a = judgeAnswer(plan, in.text)
	}
	plan = a.plan
	s.reqs.WithLabelValues(string(plan.Outcome)).Inc()

	h := w.Header()
	h.Set(HeaderOutcome, string(plan.Outcome))
	h.Set(HeaderTTFTMS, formatMS(plan.TTFT))
	h.Set(HeaderITLMS, formatMS(plan.MeanITL()))
	h.Set(HeaderCompletionTokens, strconv.Itoa(plan.DeliveredTokens()))
	h.Set(HeaderPromptTokens, strconv.Itoa(plan.PromptTokens))
	switch plan.Outcome {
	case OutcomeError:
		writeError(w, http.StatusInternalServerError, errServer, nil, "", "simulated internal server error")
		return
	case OutcomeRateLimit:
		h.Set("retry-after", strconv.Itoa(s.p.RetryAfterSeconds))
		writeError(w, http.StatusTooManyRequests, errRateLimit, "rate_limit_exceeded", "", "simulated rate limit: retry later")
		return
	}
	if in.req.Stream {
		includeUsage := in.req.StreamOptions != nil && in.req.StreamOptions.IncludeUsage
		s.stream(w, r.Context(), start, a, in.req.Model, chat, includeUsage)
		return
	}
	s.whole(w, r.Context(), start, a, in.req.Model, chat)
}

// judgeAnswer turns a plan into a judge's verdict on text: one token, the
// JSON {"score": 0.0|1.0}. Errors, rate limits and aborts still happen;
// refusals and bad answers do not apply to a judge.
func judgeAnswer(p Plan, text string) answer {
	verdict := fmt.Sprintf(`{"score": %.1f}`, JudgeScore(text))
	p.CompletionTokens, p.ITL, p.AbortAfter, p.BadAt = 1, nil, 0, 0
	if p.Outcome == OutcomeRefusal || p.Outcome == OutcomeBad {
		p.Outcome = OutcomeOK
	}
	p.FinishReason = FinishStop
	return answer{plan: p, token: func(int) string { return verdict }}
}

func formatMS(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 3, 64)
}

// sleepUntil waits for t; false means the client went away.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// stream sends the answer as vLLM's SSE: a role chunk (chat), one chunk per
// token with finish_reason on the last, a usage chunk when asked, then
// [DONE]. Headers go out at once; the first token at start+TTFT. An abort
// cuts the connection at the time the next token was due.
func (s *Server) stream(w http.ResponseWriter, ctx context.Context, start time.Time, a answer, model string, chat, includeUsage bool) {
	p := a.plan
	rc := http.NewResponseController(w)
	w.Header().Set("content-type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	if rc.Flush() != nil {
		return
	}
	id, object := "cmpl-"+p.ID, "text_completion"
	if chat {
		id, object = "chatcmpl-"+p.ID, "chat.completion.chunk"
	}
	created := time.Now().Unix()
	var usageField json.RawMessage
	if includeUsage {
		usageField = rawNull
	}
	var buf bytes.Buffer
	send := func(c chunk) bool {
		b, err := json.Marshal(c)
		if err != nil {
			return false
		}
		buf.Reset()
		buf.WriteString("data: ")
		buf.Write(b)
		buf.WriteString("\n\n")
		if _, err := w.Write(buf.Bytes()); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	mk := func(choices any) chunk {
		return chunk{ID: id, Object: object, Created: created, Model: model, Choices: choices, Usage: usageField}
	}

	n := p.DeliveredTokens()
	if p.Outcome == OutcomeAbort && n == 0 {
		sleepUntil(ctx, start.Add(p.TTFT))
		panic(http.ErrAbortHandler)
	}
	at := start.Add(p.TTFT)
	if !sleepUntil(ctx, at) {
		return
	}
	if chat {
		empty := ""
		if !send(mk([]chatChunkChoice{{Delta: chatDelta{Role: "assistant", Content: &empty}, Logprobs: rawNull}})) {
			return
		}
	}
	for i := range n {
		if i > 0 {
			at = at.Add(p.ITL[i-1])
			if !sleepUntil(ctx, at) {
				return
			}
		}
		text := a.token(i)
		var finish *string
		var stop json.RawMessage
		if i == p.CompletionTokens-1 {
			finish, stop = &p.FinishReason, rawNull
		}
		var c chunk
		if chat {
			c = mk([]chatChunkChoice{{Delta: chatDelta{Content: &text}, Logprobs: rawNull, FinishReason: finish, StopReason: stop}})
		} else {
			c = mk([]textChunkChoice{{Text: text, Logprobs: rawNull, FinishReason: finish, StopReason: rawNull}})
		}
		if !send(c) {
			return
		}
		s.tokens.Inc()
	}
	if p.Outcome == OutcomeAbort {
		sleepUntil(ctx, at.Add(p.ITL[n-1]))
		panic(http.ErrAbortHandler)
	}
	if includeUsage {
		u, _ := json.Marshal(usage{PromptTokens: p.PromptTokens, CompletionTokens: n, TotalTokens: p.PromptTokens + n})
		c := mk(make([]chatChunkChoice, 0))
		c.Usage = u
		if !send(c) {
			return
		}
	}
	if _, err := io.WriteString(w, "data: [DONE]\n\n"); err != nil {
		return
	}
	rc.Flush()
}

// whole sends the answer as one JSON object once the whole generation would
// have finished, as vLLM does: status, headers and body together. An abort
// closes the connection without a response at the time of the cut.
func (s *Server) whole(w http.ResponseWriter, ctx context.Context, start time.Time, a answer, model string, chat bool) {
	p := a.plan
	n := p.DeliveredTokens()
	if p.Outcome == OutcomeAbort {
		sleepUntil(ctx, start.Add(p.TokenAt(n)))
		panic(http.ErrAbortHandler)
	}
	if !sleepUntil(ctx, start.Add(p.TokenAt(max(n-1, 0)))) {
		return
	}
	var text strings.Builder
	for i := range n {
		text.WriteString(a.token(i))
	}
	s.tokens.Add(float64(n))
	c := completion{
		Created: time.Now().Unix(),
		Model:   model,
		Usage:   usage{PromptTokens: p.PromptTokens, CompletionTokens: n, TotalTokens: p.PromptTokens + n},
	}
	if chat {
		c.ID, c.Object = "chatcmpl-"+p.ID, "chat.completion"
		c.Choices = []chatChoice{{Message: chatMessage{Role: "assistant", Content: text.String()}, Logprobs: rawNull, FinishReason: p.FinishReason, StopReason: rawNull}}
	} else {
		c.ID, c.Object = "cmpl-"+p.ID, "text_completion"
		c.Choices = []textChoice{{Text: text.String(), Logprobs: rawNull, FinishReason: p.FinishReason, StopReason: rawNull}}
	}
	writeJSON(w, http.StatusOK, c)
}

// HeaderSawHeaders lists, comma-separated and sorted, the names of the
// x-llmcanary-* request headers that reached the pool, so tests can check
// what the gateway forwards and what it strips.
const HeaderSawHeaders = "x-sim-saw-headers"

func sawHeaders(h http.Header) string {
	var names []string
	for k := range h {
		if lk := strings.ToLower(k); strings.HasPrefix(lk, "x-llmcanary-") {
			names = append(names, lk)
		}
	}
	sort.Strings(names)
	return strings.Join(names, ",")
}
