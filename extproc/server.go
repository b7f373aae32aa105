// Package extproc is llmcanary's telemetry service: an Envoy
// ExternalProcessor that Envoy calls in observability mode. For every
// request it times the streamed response token by token, classifies how it
// ended, prices it from the serving cluster's metadata, and hands one Record
// to a Sink. Envoy never waits for it; its failure never touches a request.
package extproc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	accesslogsvc "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/llmcanary/llmcanary/internal/wire"
)

// Options configure a Server. The zero value, plus a Sink, is valid.
type Options struct {
	// Sink receives one Record per measured request. Required.
	Sink Sink
	// RequestLog receives the access-log entry of every request (see
	// envoyconfig.AccessLog). Nil means Sink when it is a LogSink too (as
	// the ClickHouse writer is), else the entries only tell reset causes.
	RequestLog LogSink
	// Registerer receives the service's metrics; nil means none.
	Registerer prometheus.Registerer
	// RefusalPatterns replace DefaultRefusalPatterns when non-nil; an empty
	// non-nil slice turns refusal detection off.
	RefusalPatterns []string
	// Capture configures sampled capture of prompt and completion text.
	Capture CaptureOptions
	// Logger receives, at debug level, the streams that ended with an
	// error; nil means slog.Default.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now. Arrivals are timed with it.
	Now func() time.Time
	// ResetWait is how long the record of a request cut off after its
	// response headers waits for Envoy's access log to say who cut it
	// (client or upstream; see ResetCauses). Zero means 3 s; negative
	// means do not wait (such requests count as upstream resets).
	ResetWait time.Duration
}

// Server implements extprocv3.ExternalProcessorServer. Safe for concurrent
// streams: each stream has its own state and one reader.
type Server struct {
	extprocv3.UnimplementedExternalProcessorServer

	sink      Sink
	causes    *ResetCauses
	accessLog *accessLogService
	resetWait time.Duration
	refusal   *RefusalDetector
	capture   CaptureOptions
	log       *slog.Logger
	now       func() time.Time
	metrics   *metrics

	// open counts the streams being processed and the records still on
	// their way to the sink (waiting for a reset cause); Drain waits on it.
	open inflight
	// cutting is set by Drain when its bound passed: streams ending from
	// then on were cut by the shutdown.
	cutting atomic.Bool
	cut     atomic.Int64
}

var _ extprocv3.ExternalProcessorServer = (*Server)(nil)

// inflight counts work in progress and tells when none is left.
type inflight struct {
	mu   sync.Mutex
	n    int
	zero chan struct{} // closed while n == 0
}

func (f *inflight) add() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == 0 {
		f.zero = make(chan struct{})
	}
	f.n++
}

func (f *inflight) done() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n--
	if f.n == 0 {
		close(f.zero)
	}
}

// idle returns a channel closed once nothing is in flight.
func (f *inflight) idle() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == 0 {
		c := make(chan struct{})
		close(c)
		return c
	}
	return f.zero
}

// NewServer checks o and returns a Server.
func NewServer(o Options) (*Server, error) {
	var errs []error
	if o.Sink == nil {
		errs = append(errs, errors.New("extproc: a sink is required"))
	}
	if err := o.Capture.Validate(); err != nil {
		errs = append(errs, err)
	}
	patterns := o.RefusalPatterns
	if patterns == nil {
		patterns = DefaultRefusalPatterns
	}
	refusal, err := NewRefusalDetector(patterns)
	if err != nil {
		errs = append(errs, err)
	}
	m, err := newMetrics(o.Registerer)
	if err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	s := &Server{
		sink:      o.Sink,
		causes:    NewResetCauses(),
		resetWait: o.ResetWait,
		refusal:   refusal,
		capture:   o.Capture.withDefaults(),
		log:       o.Logger,
		now:       o.Now,
		metrics:   m,
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.resetWait == 0 {
		s.resetWait = 3 * time.Second
	}
	logSink := o.RequestLog
	if logSink == nil {
		logSink, _ = o.Sink.(LogSink)
	}
	s.accessLog = &accessLogService{causes: s.causes, sink: logSink, metrics: m}
	return s, nil
}

// Register adds the ext_proc service, and the access log service that
// records every request and tells client cancellations from upstream
// resets, to a gRPC server.
func (s *Server) Register(g *grpc.Server) {
	extprocv3.RegisterExternalProcessorServer(g, s)
	accesslogsvc.RegisterAccessLogServiceServer(g, s.accessLog)
}

// Causes returns the table the access log service fills.
func (s *Server) Causes() *ResetCauses { return s.causes }

// Drain ends the service for a shutdown without losing a record. Call it
// once the gRPC server takes no new streams (grpc.Server.GracefulStop
// running): it waits until every open ext_proc stream has ended on its own
// and its record has reached the sink, or until ctx ends. LLM answers
// stream for minutes, so ctx should allow for the longest. When ctx ends
// first it cuts the streams still open — each is recorded with what was
// seen so far as EndShutdown — and it returns, with how many it cut, once
// their records have reached the sink. Either way it calls stop
// (grpc.Server.Stop) to end what remains, such as the access log streams
// Envoy keeps open, which GracefulStop would wait for forever.
func (s *Server) Drain(ctx context.Context, stop func()) (cut int) {
	select {
	case <-s.open.idle():
		stop()
		return 0
	case <-ctx.Done():
	}
	s.cutting.Store(true)
	stop() // every stream's Recv fails now, and Process records it
	<-s.open.idle()
	return int(s.cut.Load())
}

// Process reads one HTTP request's messages from Envoy. It records the
// request once the response ends, or, deferred, with whatever was seen when
// the stream goes away first. In observability mode it sends nothing back;
// if Envoy waits for answers (a filter configured without observability
// mode) it answers every message with "continue unchanged", so the request
// is never held up by this service.
func (s *Server) Process(srv extprocv3.ExternalProcessor_ProcessServer) error {
	s.open.add()
	defer s.open.done() // after the deferred finish below: Drain waits for the record
	s.metrics.streams.Inc()
	defer s.metrics.streams.Dec()

	st := s.newStream(s.now(), streamCapturesAll(srv.Context()))
	rate, ok := streamSampleRate(srv.Context())
	if !ok {
		s.metrics.badSampleRate.Inc()
	}
	st.rec.SampleRate = rate
	if !st.applyServed(srv.Context()) {
		s.metrics.badPrice.Inc()
	}
	if m, v, ok := streamShadow(srv.Context()); ok {
		s.markShadow(st, m, v)
	}
	defer func() {
		if st.finished {
			return
		}
		end := st.abandonedEnd()
		if s.cutting.Load() {
			end = EndShutdown
			s.cut.Add(1)
			s.metrics.cut.Inc()
		}
		s.finish(st, end, s.now())
	}()
	// Each message is read from its wire form (see decodeProcessing).
	var raw emptypb.Empty
	var msg wireProcessing
	for {
		err := srv.RecvMsg(&raw)
		if err == nil {
			err = msg.decodeProcessing(raw.ProtoReflect().GetUnknown())
		}
		if err != nil {
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled ||
				errors.Is(err, context.Canceled) {
				return nil
			}
			s.log.Debug("ext_proc stream ended", "err", err, "request_id", st.rec.RequestID)
			return nil
		}
		complete := st.handle(&msg, s.now())
		if !msg.observability {
			if err := srv.Send(continueResponse(msg.kind)); err != nil {
				return nil
			}
		}
		if complete {
			s.finish(st, EndComplete, s.now())
			// Closing from our side tells Envoy no more messages are needed.
			return nil
		}
	}
}

// stream is the explicit state of one ext_proc stream.
type stream struct {
	rec        Record
	first      time.Time // arrival of the first message
	start      time.Time // request start: Envoy's request.time, else first
	startSet   bool
	meter      *responseMeter
	sawRespHdr bool
	reqStream  *bool // the request body's "stream" flag, when seen
	capture    bool
	captureMax int
	reqBody    []byte
	prices     Prices
	metaModel  string
	metaVer    string
	finished   bool
	// shadowModel and shadowVersion are set on the stream of a mirrored
	// request (rec.Shadow): they name what answered it, whatever the
	// copied request headers say.
	shadowModel, shadowVersion string
}

// newStream starts a stream's state; captureAll keeps its text whenever
// capture is on at all (see wire.MetadataCaptureAll).
func (s *Server) newStream(now time.Time, captureAll bool) *stream {
	st := &stream{first: now, start: now}
	textCap := RefusalWindow
	if s.capture.sample() || captureAll && s.capture.Enabled() {
		st.capture = true
		st.captureMax = s.capture.MaxBytes
		if st.captureMax > textCap {
			textCap = st.captureMax
		}
	}
	st.meter = newResponseMeter(textCap)
	return st
}

// abandonedEnd says how a stream that closed before the response's end ended.
func (st *stream) abandonedEnd() End {
	if st.sawRespHdr {
		return EndUpstreamReset
	}
	return EndClientCancel
}

// handle applies one message and reports whether the response is complete.
func (st *stream) handle(m *wireProcessing, now time.Time) bool {
	st.applyAttributes(m.attrs, now)
	switch m.kind {
	case procRequestHeaders:
		st.requestHeaders(m.headers)
	case procRequestBody:
		if st.capture || st.reqStream == nil {
			st.requestBody(m.body, m.endOfStream)
		}
	case procResponseHeaders:
		st.responseHeaders(m.headers)
		return m.endOfStream
	case procResponseBody:
		st.rec.Chunks++
		st.meter.feed(m.body, now.Sub(st.start))
		return m.endOfStream
	case procResponseTrailers:
		return true
	}
	return false
}

// headerKey returns a header's name in lower case; Envoy's are already, so
// it allocates only for a name that is not.
func headerKey(k []byte) []byte {
	for _, c := range k {
		if 'A' <= c && c <= 'Z' {
			return bytes.ToLower(k)
		}
	}
	return k
}

func (st *stream) requestHeaders(hs []wireHeader) {
	for _, h := range hs {
		switch string(headerKey(h.key)) {
		case wire.HeaderRequestID:
			st.rec.RequestID = string(h.value)
		case wire.HeaderModel:
			st.rec.Model = string(h.value)
		case wire.HeaderBucket:
			if b, err := strconv.ParseUint(string(h.value), 10, 64); err == nil {
				st.rec.Bucket = b
			}
		case wire.HeaderForce:
			st.rec.Forced = len(h.value) > 0
		case wire.HeaderCategory:
			st.rec.Category = string(h.value)
		case wire.HeaderAssigned:
			st.rec.Cohort = string(h.value)
		case ":path":
			v := h.value
			if i := bytes.IndexByte(v, '?'); i >= 0 {
				v = v[:i]
			}
			st.rec.Path = string(v)
		}
	}
}

// maxRequestBody bounds the request body kept for the stream flag and capture.
const maxRequestBody = 1 << 20

func (st *stream) requestBody(b []byte, end bool) {
	if len(st.reqBody)+len(b) <= maxRequestBody {
		st.reqBody = append(st.reqBody, b...)
	}
	if end {
		if f, ok := streamFlag(st.reqBody); ok {
			st.reqStream = &f
		}
		if !st.capture {
			st.reqBody = nil
		}
	}
}

func (st *stream) responseHeaders(hs []wireHeader) {
	st.sawRespHdr = true
	for _, h := range hs {
		switch string(headerKey(h.key)) {
		case ":status":
			if c, err := strconv.Atoi(string(h.value)); err == nil {
				st.rec.Status = c
			}
		case wire.HeaderVersion:
			st.rec.Version = string(h.value)
		case "content-type":
			st.meter.setContentType(string(h.value))
		}
	}
}

// reachedPool reports whether Envoy routed the request to a version's
// cluster: the cluster's metadata names the version, or the weighted route
// announced it. Requests the gateway answers itself (GET /v1/models, the
// wasm filter's 400/404/413, 405, a forced unknown version, Envoy's own
// 431) never did; they are no version's success or failure, so they are
// counted in a metric and never become rows. A request routed to a pool
// that could not be reached did reach its version and is recorded.
func (st *stream) reachedPool() bool {
	return st.rec.Shadow || st.metaVer != "" || st.rec.Version != ""
}

// finish completes the record and hands it to the sink. It runs once per
// stream, either when the response ends or when the stream goes away. A
// stream cut off after its response headers waits, off the stream's
// goroutine, for the access log to say whether the client or the upstream
// cut it.
func (s *Server) finish(st *stream, end End, at time.Time) {
	st.finished = true
	if end == EndUpstreamReset && s.resetWait > 0 && st.rec.RequestID != "" {
		s.open.add() // Drain waits for this record too
		go func() {
			defer s.open.done()
			if cause, ok := s.causes.Wait(st.rec.RequestID, s.resetWait); ok {
				end = cause
			}
			s.record(st, end, at)
		}()
		return
	}
	s.record(st, end, at)
}

func (s *Server) record(st *stream, end End, at time.Time) {
	if !st.reachedPool() {
		s.metrics.gatewayAnswers.WithLabelValues(strconv.Itoa(st.rec.Status)).Inc()
		return
	}
	st.meter.end(at.Sub(st.start))
	r := &st.rec
	r.Time = st.start
	if r.Model == "" {
		r.Model = st.metaModel
	}
	if r.Version == "" {
		r.Version = st.metaVer
	}
	if r.Shadow {
		r.Model, r.Version, r.Forced = st.shadowModel, st.shadowVersion, false
	}
	r.Streamed = st.meter.streamed()
	if st.meter.kind == bodyUnknown && st.reqStream != nil {
		r.Streamed = *st.reqStream
	}
	r.TotalMs = ms(at.Sub(st.start))
	r.ResponseBytes = uint32(min(st.meter.bytes, uint64(^uint32(0))))
	if t, err := MeasureTokens(st.meter.arrivals); err == nil {
		r.TTFTMs = ms(t.TTFT)
		r.ITLMeanMs, r.ITLP50Ms, r.ITLP95Ms, r.ITLMaxMs = ms(t.ITLMean), ms(t.ITLP50), ms(t.ITLP95), ms(t.ITLMax)
	}
	r.PromptTokens, r.CompletionTokens, r.TokensFromUsage = st.meter.tokens()
	r.FinishReason = st.meter.finishReason
	r.Failure = Classify(Outcome{
		Status:           r.Status,
		End:              end,
		Streamed:         r.Streamed,
		SawDone:          st.meter.sawDone,
		FinishReason:     r.FinishReason,
		CompletionTokens: r.CompletionTokens,
	})
	completion := st.meter.text.String()
	r.Refusal = r.Status < 400 && s.refusal.Refusal(completion)
	r.CostUSD = Cost(r.PromptTokens, r.CompletionTokens, st.prices)
	if st.capture {
		r.Captured = true
		r.Prompt = s.capture.prepare(promptText(st.reqBody))
		r.Completion = s.capture.prepare(completion)
	}
	s.metrics.observe(r)
	s.sink.Write(*r)
}

// continueResponse is the "no change" answer to a message of kind k, for
// a filter that is not in observability mode and therefore waits for one.
func continueResponse(k procKind) *extprocv3.ProcessingResponse {
	switch k {
	case procRequestHeaders:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}}
	case procResponseHeaders:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}}
	case procRequestBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}}
	case procResponseBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}}
	case procRequestTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}}
	case procResponseTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}}
	}
	return &extprocv3.ProcessingResponse{}
}

// String names an End for logs and test failures.
func (e End) String() string {
	switch e {
	case EndComplete:
		return "complete"
	case EndUpstreamReset:
		return "upstream_reset"
	case EndClientCancel:
		return "client_cancel"
	case EndShutdown:
		return "shutdown"
	}
	return fmt.Sprintf("End(%d)", int(e))
}
