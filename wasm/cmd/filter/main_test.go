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
	c.mem.headers = make([]byte, 600)
	c.OnHttpStreamDelete()
	next := p.NewHttpContext(3).(*httpContext)
	if next != c {
		t.Fatal("a new stream did not reuse the deleted stream's context")
	}
	if cap(next.mem.headers) != 600 {
		t.Errorf("the reused context lost its memory: headers %d bytes", cap(next.mem.headers))
	}
	if other := p.NewHttpContext(4).(*httpContext); other == c {
		t.Error("a live context was handed out twice")
	}
}

func TestAContextKeepsNoLargeHeaderBlockForReuse(t *testing.T) {
	p := testPlugin(t)
	c := p.NewHttpContext(2).(*httpContext)
	c.mem.headers = make([]byte, keepHeaderBytes+1)
	c.OnHttpStreamDelete()
	if c.mem.headers != nil || c.mem.pairs != nil {
		t.Errorf("a free context keeps %d header bytes, want none over the limit", cap(c.mem.headers))
	}
}
