package filter

import (
	"errors"
	"math/rand/v2"
	"strconv"
	"strings"
	"unsafe"

	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/wasm/filterconfig"
)

// Host is what a Stream needs from the proxy for one HTTP stream. The wasm
// module implements it with proxy-wasm host calls; header names are
// lower-case as in HTTP/2. Edits to request headers must make the proxy pick
// the route again (Envoy does so for ABI ≤ 0.2.1 modules).
type Host interface {
	// RequestHeaders returns all request headers, pseudo-headers included.
	RequestHeaders() ([][2]string, error)
	// SetRequestHeader sets a header. name and value may share the
	// stream's memory: the host copies them (a proxy-wasm host does).
	SetRequestHeader(name, value string) error
	RemoveRequestHeader(name string) error
	// RequestBody returns the first size bytes of the buffered body. They
	// are valid only until the callback that read them returns, and the
	// Stream keeps nothing that shares their memory after it (the wasm
	// module reads every stream's body into one block).
	RequestBody(size int) ([]byte, error)
	// SendLocalResponse answers the request instead of forwarding it.
	SendLocalResponse(status int, headers [][2]string, body []byte) error
	// Warn logs a problem the client cannot see.
	Warn(msg string)
}

// Action tells the proxy whether to go on with the stream or hold it.
type Action int

// Actions.
const (
	Continue Action = iota
	Pause
)

func (a Action) String() string {
	if a == Pause {
		return "pause"
	}
	return "continue"
}

// BodyPaths are the POST paths whose route depends on the body's model.
var BodyPaths = map[string]bool{
	"/v1/chat/completions": true,
	"/v1/completions":      true,
}

// Plugin is one validated filter configuration, shared by the streams it
// creates. Its configuration is immutable; its hashing state is reused by
// every stream, so a Plugin's streams must run one callback at a time, as
// they do in a proxy-wasm VM.
type Plugin struct {
	cfg        filterconfig.Config
	bucketer   *Bucketer
	keys       ForceKeys
	models     map[string]bool
	bodyFields []string
	random     func() uint64
	// categorySource is the configured CategoryHeader, lower-case, when it
	// is not x-llmcanary-category itself; else empty.
	categorySource string
	// cohortHeader and tenantHeader are the configured CohortHeader and
	// TenantHeader, lower-case ("" when there is no tenant header).
	cohortHeader, tenantHeader string
	// cohorts are the models' cohorts, by model.
	cohorts map[string]modelCohorts
}

// NewPlugin prepares cfg (defaults applied, then validated).
func NewPlugin(cfg filterconfig.Config) (*Plugin, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, errors.New("filter config: " + err.Error())
	}
	keys, err := ParseForceKeys(cfg.ForceKeys)
	if err != nil {
		return nil, err
	}
	p := &Plugin{cfg: cfg, bucketer: NewBucketer([]byte(cfg.HashKey)), keys: keys, models: map[string]bool{}, random: rand.Uint64}
	for _, m := range cfg.Models {
		p.models[m] = true
	}
	if ch := strings.ToLower(cfg.CategoryHeader); ch != wire.HeaderCategory {
		p.categorySource = ch
	}
	p.cohortHeader, p.tenantHeader = strings.ToLower(cfg.CohortHeader), strings.ToLower(cfg.TenantHeader)
	if len(cfg.Cohorts) > 0 {
		p.cohorts = make(map[string]modelCohorts, len(cfg.Cohorts))
		for _, mc := range cfg.Cohorts {
			p.cohorts[mc.Model] = modelCohorts{newMemberSet(mc.OptIn), newMemberSet(mc.Excluded)}
		}
	}
	for _, s := range cfg.Identity {
		if s.BodyField != "" {
			p.bodyFields = append(p.bodyFields, s.BodyField)
		}
	}
	return p, nil
}

// Config returns the plugin's configuration with defaults applied.
func (p *Plugin) Config() filterconfig.Config { return p.cfg }

// NewStream starts the state of one HTTP stream.
func (p *Plugin) NewStream(h Host) *Stream {
	s := new(Stream)
	s.Reset(p, h)
	return s
}

// Reset makes s the state of a new HTTP stream of p, as NewStream does,
// in memory the caller owns (the wasm module keeps it in its per-stream
// context, one allocation for both).
func (s *Stream) Reset(p *Plugin, h Host) { *s = Stream{p: p, h: h} }

// Stream is the filter's state for one HTTP stream. Its callbacks are
// called in stream order from one goroutine.
type Stream struct {
	p       *Plugin
	h       Host
	req     Request
	holding bool // headers held until the body has named the model
	replied bool // a local response was sent
	size    int  // body bytes buffered so far
	model   string
	// cohort and tenant are the request's cohort (when its header may be
	// trusted) and tenant header values, "" when absent.
	cohort, tenant string
	// fields and keyDigits are memory of the stream's own for the body
	// fields read and the routing headers' values, so that routing a
	// request allocates nothing.
	fields    [2][2]string
	keyDigits [3 * 20]byte
}

// OnRequestHeaders sanitises the llmcanary headers a client sent, then either
// sets the bucket and continues, or, on a body-routed path, holds the
// headers (Pause) until OnRequestBody has read the model.
func (s *Stream) OnRequestHeaders(endOfStream bool) Action {
	hs, err := s.h.RequestHeaders()
	if err != nil {
		s.h.Warn("llmcanary: read request headers: " + err.Error())
		return s.reply(errInternal())
	}
	s.req = Request{Headers: hs}
	h := s.p.readHeaders(hs)
	if err := s.sanitise(&h); err != nil {
		s.h.Warn("llmcanary: " + err.Error())
		return s.reply(errInternal())
	}
	s.tenant = h.tenant.v
	if s.p.cfg.CohortHeaderTrusted || (h.key.ok && s.p.keys.Accepts(h.key.v)) {
		s.cohort = h.cohort.v
	}
	path, _, _ := strings.Cut(h.path.v, "?")
	if h.method.v != "POST" || !BodyPaths[path] {
		return s.finish()
	}
	if h.contentLength.ok {
		if n, err := strconv.ParseUint(h.contentLength.v, 10, 63); err == nil && n > uint64(s.p.cfg.MaxBodyBytes) {
			return s.reply(errTooLarge())
		}
	}
	if endOfStream {
		return s.reply(errBadBody(ErrMalformedBody))
	}
	s.holding = true
	return Pause
}

// header is the first value of a request header, if it is present.
type header struct {
	v  string
	ok bool
}

// requestHeaders are the request headers the filter reads itself (identity
// sources aside), found in one pass over the headers.
type requestHeaders struct {
	method, path, contentLength, requestID header
	key, force, model, category            header
	categorySource                         header // the configured CategoryHeader, when it is another header
	cohort, tenant, assigned               header // the configured CohortHeader and TenantHeader, and wire.HeaderAssigned
}

// readHeaders finds the headers the filter reads in hs. Names are compared
// exactly: the host presents them lower-case (see Host).
func (p *Plugin) readHeaders(hs [][2]string) requestHeaders {
	var r requestHeaders
	first := func(h *header, v string) {
		if !h.ok {
			*h = header{v, true}
		}
	}
	for _, kv := range hs {
		if kv[0] == p.categorySource {
			first(&r.categorySource, kv[1])
		}
		if kv[0] == p.cohortHeader {
			first(&r.cohort, kv[1])
		}
		if kv[0] == p.tenantHeader {
			first(&r.tenant, kv[1])
		}
		switch kv[0] {
		case ":method":
			first(&r.method, kv[1])
		case ":path":
			first(&r.path, kv[1])
		case "content-length":
			first(&r.contentLength, kv[1])
		case wire.HeaderRequestID:
			first(&r.requestID, kv[1])
		case wire.HeaderKey:
			first(&r.key, kv[1])
		case wire.HeaderForce:
			first(&r.force, kv[1])
		case wire.HeaderModel:
			first(&r.model, kv[1])
		case wire.HeaderCategory:
			first(&r.category, kv[1])
		case wire.HeaderAssigned:
			first(&r.assigned, kv[1])
		}
	}
	return r
}

// OnRequestBody buffers the body of a held request; at its end it reads
// the model, sets the routing headers and continues.
func (s *Stream) OnRequestBody(bodySize int, endOfStream bool) Action {
	if s.replied {
		return Pause
	}
	if !s.holding {
		return Continue
	}
	s.size = bodySize
	if bodySize > s.p.cfg.MaxBodyBytes {
		return s.reply(errTooLarge())
	}
	if !endOfStream {
		return Pause
	}
	return s.bodyDone()
}

// OnRequestTrailers ends a held body that was followed by trailers.
func (s *Stream) OnRequestTrailers() Action {
	if s.replied {
		return Pause
	}
	if !s.holding {
		return Continue
	}
	return s.bodyDone()
}

func (s *Stream) bodyDone() Action {
	data, err := s.h.RequestBody(s.size)
	if err != nil {
		s.h.Warn("llmcanary: read request body: " + err.Error())
		return s.reply(errBadBody(ErrMalformedBody))
	}
	b, err := parseBody(data, s.fields[:0], s.p.bodyFields)
	if err != nil {
		return s.reply(errBadBody(err))
	}
	if !s.p.models[b.Model] {
		return s.reply(errUnknownModel(b.Model))
	}
	if err := s.h.SetRequestHeader(wire.HeaderModel, b.Model); err != nil {
		s.h.Warn("llmcanary: " + err.Error())
		return s.reply(errInternal())
	}
	s.req.BodyFields = b.Fields
	s.model = b.Model
	s.holding = false
	a := s.finish()
	// The body's strings share its memory, which is not the stream's to
	// keep (see Host.RequestBody).
	s.req.BodyFields, s.model, s.fields = nil, "", [2][2]string{}
	return a
}

// finish sets the bucket and the sampling keys and lets the request go on
// to the router.
func (s *Stream) finish() Action {
	var k Keys
	id, ok := Identity(s.p.cfg.Identity, s.req)
	if ok {
		k = s.p.bucketer.Keys(id)
	} else {
		k = RandomKeys(s.p.random)
	}
	if c, ok := s.p.cohorts[s.model]; ok {
		if rule := c.of(id, s.cohort, s.tenant); rule != "" {
			if err := s.h.SetRequestHeader(wire.HeaderAssigned, rule); err != nil {
				s.h.Warn("llmcanary: " + err.Error())
				return s.reply(errInternal())
			}
		}
	}
	// The three values are written into the stream's memory and passed to
	// the host, which copies them, as strings sharing it: no allocation.
	b := strconv.AppendUint(s.keyDigits[:0], k.Bucket, 10)
	n1 := len(b)
	b = strconv.AppendUint(b, uint64(k.Sample), 10)
	n2 := len(b)
	b = strconv.AppendUint(b, uint64(k.Background), 10)
	all := unsafe.String(&b[0], len(b))
	for _, h := range [...]struct{ name, v string }{
		{wire.HeaderBucket, all[:n1]}, {wire.HeaderSample, all[n1:n2]}, {wire.HeaderBackground, all[n2:]},
	} {
		if err := s.h.SetRequestHeader(h.name, h.v); err != nil {
			s.h.Warn("llmcanary: " + err.Error())
			return s.reply(errInternal())
		}
	}
	return Continue
}

// sanitise removes or rewrites what a client may not decide: the key is
// never forwarded, force survives only with a valid key, the model header and
// the cohort assignment are the filter's alone, the cohort header is
// removed (read first only when trusted or sent with a valid key), the category comes from the configured header only
// when the operator trusts the hop that sets it (else it is dropped), and
// a request id (Envoy keeps a client's own) that is not well-formed is
// replaced by a fresh one, which Envoy then returns in the response.
func (s *Stream) sanitise(h *requestHeaders) error {
	var errs []error
	remove := func(seen header, name string) {
		if seen.ok {
			errs = append(errs, s.h.RemoveRequestHeader(name))
		}
	}
	if !h.requestID.ok || !WellFormedRequestID(h.requestID.v) {
		errs = append(errs, s.h.SetRequestHeader(wire.HeaderRequestID, newRequestID(s.p.random)))
	}
	if h.force.ok && !s.p.keys.Accepts(h.key.v) {
		remove(h.force, wire.HeaderForce)
	}
	remove(h.key, wire.HeaderKey)
	remove(h.model, wire.HeaderModel)
	remove(h.assigned, wire.HeaderAssigned)
	// x-llmcanary-cohort never reaches a pool: it is read here, when it
	// may be trusted, and the decision travels in wire.HeaderAssigned. A
	// configured header of the operator's own is left as it is.
	if s.p.cohortHeader == wire.HeaderCohort {
		remove(h.cohort, wire.HeaderCohort)
	}
	switch {
	case !s.p.cfg.CategoryHeaderTrusted:
		remove(h.category, wire.HeaderCategory)
	case s.p.categorySource != "":
		if v := h.categorySource; v.ok && v.v != "" {
			errs = append(errs, s.h.SetRequestHeader(wire.HeaderCategory, v.v))
		} else {
			remove(h.category, wire.HeaderCategory)
		}
	}
	return errors.Join(errs...)
}

func (s *Stream) reply(e APIError) Action {
	s.replied = true
	s.holding = false
	err := s.h.SendLocalResponse(e.Status, [][2]string{{"content-type", "application/json"}}, e.Body())
	if err != nil {
		s.h.Warn("llmcanary: send local response: " + err.Error())
	}
	return Pause
}
