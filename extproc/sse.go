package extproc

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// SSEParser splits a text/event-stream body into events as its bytes arrive
// in arbitrary chunks: an event may be split across chunks and a chunk may
// hold several events. Lines end in "\n", "\r\n" or "\r" (a "\r\n" split
// across two chunks counts once). Comment lines (":") and fields other than
// "data" are ignored; several data lines of one event are joined with "\n",
// as the SSE specification says.
//
// The zero value is ready to use. Not safe for concurrent use.
type SSEParser struct {
	line    []byte // the unfinished line carried over from the previous chunk
	data    []byte // data of the event being assembled
	hasData bool   // the current event has at least one data line
	skipLF  bool   // the previous chunk ended in "\r": a leading "\n" closes that line
}

// Feed consumes one chunk and calls emit for every event it completes, in
// order. The slice passed to emit is only valid during the call.
func (p *SSEParser) Feed(chunk []byte, emit func(data []byte)) {
	for len(chunk) > 0 {
		if p.skipLF {
			p.skipLF = false
			if chunk[0] == '\n' {
				chunk = chunk[1:]
				continue
			}
		}
		i := bytes.IndexAny(chunk, "\r\n")
		if i < 0 {
			p.line = append(p.line, chunk...)
			return
		}
		var line []byte
		if len(p.line) > 0 {
			p.line = append(p.line, chunk[:i]...)
			line = p.line
		} else {
			line = chunk[:i]
		}
		if chunk[i] == '\r' {
			if i+1 < len(chunk) {
				if chunk[i+1] == '\n' {
					i++
				}
			} else {
				p.skipLF = true
			}
		}
		chunk = chunk[i+1:]
		p.processLine(line, emit)
		p.line = p.line[:0]
	}
}

// Flush ends the body. An event whose closing blank line never came is
// still emitted: for measurement a last "data: [DONE]" without its blank
// line is worth more than the specification's strictness.
func (p *SSEParser) Flush(emit func(data []byte)) {
	if len(p.line) > 0 {
		p.processLine(p.line, emit)
		p.line = p.line[:0]
	}
	p.dispatch(emit)
	p.skipLF = false
}

func (p *SSEParser) processLine(line []byte, emit func(data []byte)) {
	if len(line) == 0 {
		p.dispatch(emit)
		return
	}
	if line[0] == ':' {
		return
	}
	field, value := line, []byte(nil)
	if i := bytes.IndexByte(line, ':'); i >= 0 {
		field, value = line[:i], line[i+1:]
		if len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
	}
	if string(field) != "data" {
		return
	}
	if p.hasData {
		p.data = append(p.data, '\n')
	}
	p.data = append(p.data, value...)
	p.hasData = true
}

func (p *SSEParser) dispatch(emit func(data []byte)) {
	if !p.hasData {
		return
	}
	emit(p.data)
	p.data = p.data[:0]
	p.hasData = false
}

// Usage is the token accounting an OpenAI-compatible server reports.
type Usage struct {
	PromptTokens     uint32 `json:"prompt_tokens"`
	CompletionTokens uint32 `json:"completion_tokens"`
}

// Chunk is what one SSE event, or one whole JSON response body, says about
// the completion.
type Chunk struct {
	Done         bool   // the "[DONE]" sentinel
	Content      string // generated text in this chunk
	HasContent   bool   // carries at least one generated token (text, reasoning or a tool call)
	FinishReason string // the first non-empty finish_reason among the choices
	Usage        *Usage // present in the usage chunk and in non-streamed bodies
	Error        bool   // an {"error": ...} object
}

// ErrNotJSON reports an event whose data is neither "[DONE]" nor a JSON
// object.
var ErrNotJSON = errors.New("event data is not a JSON object")

type wireChoice struct {
	Text  *string `json:"text"`
	Delta *struct {
		Content          *string         `json:"content"`
		ReasoningContent *string         `json:"reasoning_content"`
		ToolCalls        json.RawMessage `json:"tool_calls"`
	} `json:"delta"`
	Message *struct {
		Content   *string         `json:"content"`
		ToolCalls json.RawMessage `json:"tool_calls"`
	} `json:"message"`
	FinishReason *string `json:"finish_reason"`
}

type wireChunk struct {
	Choices []wireChoice    `json:"choices"`
	Usage   *Usage          `json:"usage"`
	Error   json.RawMessage `json:"error"`
}

var doneSentinel = []byte("[DONE]")

// DecodeChunk interprets one event's data (or a non-streamed JSON body):
// chat.completion.chunk (choices[].delta), text_completion (choices[].text),
// chat.completion (choices[].message), the usage-only chunk (choices: [] +
// usage), an error object, or the "[DONE]" sentinel.
func DecodeChunk(data []byte) (Chunk, error) {
	data = bytes.TrimSpace(data)
	if bytes.Equal(data, doneSentinel) {
		return Chunk{Done: true}, nil
	}
	if len(data) == 0 || data[0] != '{' {
		return Chunk{}, ErrNotJSON
	}
	var w wireChunk
	if err := json.Unmarshal(data, &w); err != nil {
		return Chunk{}, fmt.Errorf("decode chunk: %w", err)
	}
	c := Chunk{Usage: w.Usage, Error: len(w.Error) > 0 && string(w.Error) != "null"}
	for _, ch := range w.Choices {
		if ch.FinishReason != nil && *ch.FinishReason != "" && c.FinishReason == "" {
			c.FinishReason = *ch.FinishReason
		}
		switch {
		case ch.Delta != nil:
			if ch.Delta.Content != nil && *ch.Delta.Content != "" {
				c.Content += *ch.Delta.Content
				c.HasContent = true
			}
			if ch.Delta.ReasoningContent != nil && *ch.Delta.ReasoningContent != "" {
				c.HasContent = true
			}
			if hasJSONValue(ch.Delta.ToolCalls) {
				c.HasContent = true
			}
		case ch.Message != nil:
			if ch.Message.Content != nil && *ch.Message.Content != "" {
				c.Content += *ch.Message.Content
				c.HasContent = true
			}
			if hasJSONValue(ch.Message.ToolCalls) {
				c.HasContent = true
			}
		case ch.Text != nil:
			if *ch.Text != "" {
				c.Content += *ch.Text
				c.HasContent = true
			}
		}
	}
	return c, nil
}

func hasJSONValue(raw json.RawMessage) bool {
	s := string(bytes.TrimSpace(raw))
	return s != "" && s != "null" && s != "[]"
}
