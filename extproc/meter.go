package extproc

import (
	"bytes"
	"mime"
	"strings"
	"time"
)

// maxJSONBody bounds how much of a non-streamed body is kept for decoding.
// A larger body is still timed and counted, but its usage is not read.
const maxJSONBody = 4 << 20

type bodyKind int

const (
	bodyUnknown bodyKind = iota // decided by the first body byte
	bodySSE
	bodyJSON
)

// responseMeter reads one response body as it arrives and keeps what the
// record needs: when each content-bearing event arrived (as offsets from
// the request's start), the [DONE] sentinel, finish reason, usage and the
// beginning of the completion text. It is pure: arrival offsets are given
// by the caller.
type responseMeter struct {
	kind    bodyKind
	parser  SSEParser
	jsonBuf []byte
	jsonBig bool
	at      time.Duration // arrival offset of the chunk being fed

	arrivals     []time.Duration
	sawDone      bool
	finishReason string
	usage        *Usage
	sawError     bool
	text         strings.Builder
	textCap      int
	events       uint32
	badEvents    uint32
	bytes        uint64
	firstByte    time.Duration
	sawFirstByte bool
}

func newResponseMeter(textCap int) *responseMeter {
	return &responseMeter{textCap: textCap}
}

// setContentType picks the body parser from the response's content-type.
func (m *responseMeter) setContentType(ct string) {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return
	}
	switch {
	case mt == "text/event-stream":
		m.kind = bodySSE
	case mt == "application/json" || strings.HasSuffix(mt, "+json"):
		m.kind = bodyJSON
	}
}

// streamed reports whether the body is an event stream.
func (m *responseMeter) streamed() bool { return m.kind == bodySSE }

// feed consumes one body chunk that arrived at offset at.
func (m *responseMeter) feed(chunk []byte, at time.Duration) {
	if len(chunk) == 0 {
		return
	}
	m.bytes += uint64(len(chunk))
	if !m.sawFirstByte {
		m.sawFirstByte, m.firstByte = true, at
	}
	if m.kind == bodyUnknown {
		if t := bytes.TrimLeft(chunk, " \t\r\n"); len(t) > 0 {
			if t[0] == '{' {
				m.kind = bodyJSON
			} else {
				m.kind = bodySSE
			}
		}
	}
	switch m.kind {
	case bodySSE:
		m.at = at
		m.parser.Feed(chunk, m.onEvent)
	case bodyJSON, bodyUnknown:
		if len(m.jsonBuf)+len(chunk) > maxJSONBody {
			m.jsonBig = true
			return
		}
		m.jsonBuf = append(m.jsonBuf, chunk...)
	}
}

// end completes the body at offset at.
func (m *responseMeter) end(at time.Duration) {
	switch m.kind {
	case bodySSE:
		m.at = at
		m.parser.Flush(m.onEvent)
	case bodyJSON:
		if m.jsonBig || len(bytes.TrimSpace(m.jsonBuf)) == 0 {
			return
		}
		c, err := DecodeChunk(m.jsonBuf)
		if err != nil {
			m.badEvents++
			return
		}
		m.events++
		// A non-streamed body shows no tokens as they are made: its one
		// "token" arrival is the first byte of the body.
		m.apply(c, m.firstByte)
	}
}

func (m *responseMeter) onEvent(data []byte) {
	c, err := decodeChunk(data, m.text.Len() < m.textCap)
	if err != nil {
		m.badEvents++
		return
	}
	m.events++
	m.apply(c, m.at)
}

func (m *responseMeter) apply(c Chunk, at time.Duration) {
	if c.Done {
		m.sawDone = true
		return
	}
	if c.Error {
		m.sawError = true
	}
	if c.HasContent {
		m.arrivals = append(m.arrivals, at)
	}
	if c.FinishReason != "" {
		m.finishReason = c.FinishReason
	}
	if c.Usage != nil {
		u := *c.Usage
		m.usage = &u
	}
	if c.Content != "" && m.text.Len() < m.textCap {
		s := c.Content
		if room := m.textCap - m.text.Len(); len(s) > room {
			s = truncateUTF8(s, room)
		}
		m.text.WriteString(s)
	}
}

// tokens returns completion and prompt tokens: from usage when the server
// reported it, else the number of content-bearing events (one per token,
// as vLLM streams) and no prompt count.
func (m *responseMeter) tokens() (prompt, completion uint32, fromUsage bool) {
	if m.usage != nil {
		return m.usage.PromptTokens, m.usage.CompletionTokens, true
	}
	return 0, uint32(len(m.arrivals)), false
}
