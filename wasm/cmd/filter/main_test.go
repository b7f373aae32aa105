package main

import (
	"strings"
	"testing"

	"github.com/llmcanary/llmcanary/wasm/filter"
	"github.com/llmcanary/llmcanary/wasm/filterconfig"
)

func testPlugin(t *testing.T) *pluginContext {
	t.Helper()
	pl, err := filter.NewPlugin(filterconfig.Config{HashKey: strings.Repeat("k", filterconfig.MinHashKeyBytes), Models: []string{"m1"}})
	if err != nil {
		t.Fatal(err)
	}
	return &pluginContext{plugin: pl}
}

func TestADeletedStreamsContextServesTheNextStreamWithItsMemory(t *testing.T) {
	p := testPlugin(t)
	c := p.NewHttpContext(2).(*httpContext)
	c.mem.headers, c.mem.body = make([]byte, 600), make([]byte, 300)
	c.OnHttpStreamDelete()
	next := p.NewHttpContext(3).(*httpContext)
	if next != c {
		t.Fatal("a new stream did not reuse the deleted stream's context")
	}
	if cap(next.mem.headers) != 600 || cap(next.mem.body) != 300 {
		t.Errorf("the reused context lost its memory: headers %d, body %d bytes", cap(next.mem.headers), cap(next.mem.body))
	}
	if other := p.NewHttpContext(4).(*httpContext); other == c {
		t.Error("a live context was handed out twice")
	}
}

func TestAContextKeepsNoLargeBlocksForReuse(t *testing.T) {
	p := testPlugin(t)
	c := p.NewHttpContext(2).(*httpContext)
	c.mem.headers, c.mem.body = make([]byte, keepHeaderBytes+1), make([]byte, keepBodyBytes+1)
	c.OnHttpStreamDelete()
	if c.mem.headers != nil || c.mem.pairs != nil || c.mem.body != nil {
		t.Errorf("a free context keeps %d header and %d body bytes, want none over the limits", cap(c.mem.headers), cap(c.mem.body))
	}
}
