package extproc

import (
	"sync"
	"time"

	accesslogdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
)

// ResetCauses learns from Envoy's gRPC access log who ended a request that
// stopped early. ext_proc alone cannot tell: once response headers went out,
// an upstream reset and a client hanging up look the same on the ext_proc
// stream. Envoy's response flags can (DC/DR: the client; UR/UC/UF/UT/SI/UPE:
// the upstream side; UPE is what Envoy reports when a pool drops its
// connection in the middle of a chunked body). The access log service on the same gRPC server as
// the ext_proc service puts the causes of the entries that carry one of
// those flags, keyed by x-request-id.
//
// Causes are kept for CauseTTL. Safe for concurrent use.
type ResetCauses struct {
	mu      sync.Mutex
	causes  map[string]causeEntry
	swept   time.Time
	waiters map[string][]chan End
}

type causeEntry struct {
	end End
	at  time.Time
}

// CauseTTL is how long a learned cause is kept for the ext_proc stream of
// the same request to pick it up.
const CauseTTL = 2 * time.Minute

// NewResetCauses returns an empty cause table.
func NewResetCauses() *ResetCauses {
	return &ResetCauses{causes: map[string]causeEntry{}, waiters: map[string][]chan End{}}
}

// causeOf maps Envoy's response flags to how the request ended. Upstream
// flags win: when the pool resets, the client is cut off too.
func causeOf(f *accesslogdata.ResponseFlags) (End, bool) {
	switch {
	case f == nil:
		return 0, false
	case f.GetUpstreamRemoteReset(), f.GetUpstreamConnectionTermination(), f.GetUpstreamConnectionFailure(),
		f.GetUpstreamRequestTimeout(), f.GetStreamIdleTimeout(), f.GetUpstreamProtocolError():
		return EndUpstreamReset, true
	case f.GetDownstreamConnectionTermination(), f.GetDownstreamRemoteReset():
		return EndClientCancel, true
	}
	return 0, false
}

// Put records how the request ended.
func (c *ResetCauses) Put(requestID string, end End) {
	if requestID == "" {
		return
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if now.Sub(c.swept) > CauseTTL/4 {
		for id, e := range c.causes {
			if now.Sub(e.at) > CauseTTL {
				delete(c.causes, id)
			}
		}
		c.swept = now
	}
	c.causes[requestID] = causeEntry{end: end, at: now}
	for _, w := range c.waiters[requestID] {
		w <- end
	}
	delete(c.waiters, requestID)
}

// Wait returns how the request ended if the access log says so within d;
// ok is false otherwise.
func (c *ResetCauses) Wait(requestID string, d time.Duration) (end End, ok bool) {
	if requestID == "" {
		return 0, false
	}
	c.mu.Lock()
	if e, found := c.causes[requestID]; found {
		c.mu.Unlock()
		return e.end, true
	}
	ch := make(chan End, 1)
	c.waiters[requestID] = append(c.waiters[requestID], ch)
	c.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case end := <-ch:
		return end, true
	case <-t.C:
		c.mu.Lock()
		ws := c.waiters[requestID]
		for i, w := range ws {
			if w == ch {
				c.waiters[requestID] = append(ws[:i], ws[i+1:]...)
				break
			}
		}
		if len(c.waiters[requestID]) == 0 {
			delete(c.waiters, requestID)
		}
		c.mu.Unlock()
		select { // Put may have answered while the timer fired
		case end := <-ch:
			return end, true
		default:
			return 0, false
		}
	}
}
