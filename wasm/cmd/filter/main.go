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
	// headers and body are read into.
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

// streamMemory is where a stream's headers and body are read to. The
// stream's strings alias it, so it is reused only by a later stream.
type streamMemory struct {
	headers []byte      // the header map as the host wrote it
	pairs   [][2]string // the headers, aliasing headers
	body    []byte
}

// Blocks larger than these are not kept for reuse: a context in the free
// list should not hold on to a rare large body.
const (
	keepHeaderBytes = 16 << 10
	keepBodyBytes   = 64 << 10
)

// OnHttpStreamDelete puts c in its plugin's free list.
func (c *httpContext) OnHttpStreamDelete() {
	if cap(c.mem.headers) > keepHeaderBytes {
		c.mem.headers, c.mem.pairs = nil, nil
	}
	if cap(c.mem.body) > keepBodyBytes {
		c.mem.body = nil
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

func (h host) RequestBody(size int) ([]byte, error) {
	return abi.GetHttpRequestBodyInto(&h.mem.body, 0, size)
}

func (host) SendLocalResponse(status int, headers [][2]string, body []byte) error {
	return abi.SendHttpResponseWithDetails(uint32(status), wire.DetailsFilterReply, headers, body, -1)
}

func (host) Warn(msg string) { abi.LogWarn(msg) }
