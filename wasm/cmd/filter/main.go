// Command filter is llmcanary's proxy-wasm HTTP filter module, built with
// upstream Go as a wasip1 reactor:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o bin/llmcanary-filter.wasm ./wasm/cmd/filter
//
// It binds the proxy-wasm ABI (wasm/abi) to the filter's logic
// (wasm/filter); the configuration is filterconfig.Config as JSON.
package main

import (
	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/wasm/abi"
	"github.com/llmcanary/llmcanary/wasm/filter"
	"github.com/llmcanary/llmcanary/wasm/filterconfig"
)

// init runs from _initialize, before the host calls any export.
func init() { abi.SetVMContext(vmContext{}) }

// main is never called in a reactor; the exports are the entry points.
func main() {}

type vmContext struct{ abi.DefaultVMContext }

func (vmContext) NewPluginContext(uint32) abi.PluginContext { return &pluginContext{} }

// pluginContext holds the configuration of one plugin instance. Envoy
// creates a new one, and calls OnPluginStart again, when the listener's
// filter configuration changes over xDS; streams keep the plugin they
// started with.
type pluginContext struct {
	abi.DefaultPluginContext
	plugin *filter.Plugin
	// free holds the contexts of deleted streams for reuse: a new stream
	// then allocates nothing, neither its context nor the memory its
	// headers are read into.
	free []*httpContext
}

// OnPluginStart parses and validates the configuration; returning false
// makes Envoy reject it (an xDS update is NACKed, a bootstrap fails).
func (p *pluginContext) OnPluginStart(int) bool {
	data, err := abi.GetPluginConfiguration()
	if err != nil {
		abi.LogCritical("llmcanary: read plugin configuration: " + err.Error())
		return false
	}
	cfg, err := filterconfig.Parse(data)
	if err != nil {
		abi.LogCritical("llmcanary: " + err.Error())
		return false
	}
	pl, err := filter.NewPlugin(cfg)
	if err != nil {
		abi.LogCritical("llmcanary: " + err.Error())
		return false
	}
	p.plugin = pl
	abi.LogInfo("llmcanary: filter configured")
	return true
}

func (p *pluginContext) NewHttpContext(uint32) abi.HttpContext {
	if p.plugin == nil {
		return abi.DefaultHttpContext{}
	}
	var c *httpContext
	if n := len(p.free); n > 0 {
		c, p.free[n-1] = p.free[n-1], nil
		p.free = p.free[:n-1]
	} else {
		c = &httpContext{plugin: p}
	}
	c.s.Reset(p.plugin, host{&c.mem})
	return c
}

type httpContext struct {
	abi.DefaultHttpContext
	s      filter.Stream
	plugin *pluginContext
	mem    streamMemory
}

// streamMemory is where a stream's headers are read to. The stream's
// strings alias it for the stream's whole life, so it is reused only by a
// later stream.
type streamMemory struct {
	headers []byte      // the header map as the host wrote it
	pairs   [][2]string // the headers, aliasing headers
}

// bodyMemory is the block every stream's body is read into: a body is read
// and routed on within one callback, and nothing read from it outlives
// that callback (filter.Host), so one block serves all streams, and a
// stream held for a long answer keeps no body.
var bodyMemory []byte

// Blocks larger than these are not kept for reuse: a rare large request
// should not leave its memory held.
const (
	keepHeaderBytes = 16 << 10
	keepBodyBytes   = 64 << 10
)

// OnHttpStreamDelete puts c in its plugin's free list.
func (c *httpContext) OnHttpStreamDelete() {
	if cap(c.mem.headers) > keepHeaderBytes {
		c.mem.headers, c.mem.pairs = nil, nil
	}
	c.s.Reset(nil, nil)
	c.plugin.free = append(c.plugin.free, c)
}

func (c *httpContext) OnHttpRequestHeaders(_ int, endOfStream bool) abi.Action {
	return action(c.s.OnRequestHeaders(endOfStream))
}

func (c *httpContext) OnHttpRequestBody(bodySize int, endOfStream bool) abi.Action {
	return action(c.s.OnRequestBody(bodySize, endOfStream))
}

func (c *httpContext) OnHttpRequestTrailers(int) abi.Action {
	return action(c.s.OnRequestTrailers())
}

func action(a filter.Action) abi.Action {
	if a == filter.Pause {
		return abi.ActionPause
	}
	return abi.ActionContinue
}

// host implements filter.Host with proxy-wasm host calls on the current
// stream, reading into the stream's memory.
type host struct{ mem *streamMemory }

var (
	_ filter.Host           = host{}
	_ abi.HttpStreamDeleter = (*httpContext)(nil)
)

func (h host) RequestHeaders() ([][2]string, error) {
	pairs, err := abi.GetHttpRequestHeadersInto(&h.mem.headers, h.mem.pairs)
	if err == nil {
		h.mem.pairs = pairs[:0]
	}
	return pairs, err
}

func (host) SetRequestHeader(name, value string) error {
	return abi.ReplaceHttpRequestHeader(name, value)
}

func (host) RemoveRequestHeader(name string) error { return abi.RemoveHttpRequestHeader(name) }

func (host) RequestBody(size int) ([]byte, error) {
	b, err := abi.GetHttpRequestBodyInto(&bodyMemory, 0, size)
	if cap(bodyMemory) > keepBodyBytes {
		bodyMemory = nil // b stays valid: the caller's reference keeps it
	}
	return b, err
}

func (host) SendLocalResponse(status int, headers [][2]string, body []byte) error {
	return abi.SendHttpResponseWithDetails(uint32(status), wire.DetailsFilterReply, headers, body, -1)
}

func (host) Warn(msg string) { abi.LogWarn(msg) }
