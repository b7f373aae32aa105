package extproc

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"

	"github.com/llmcanary/llmcanary/internal/jsonscan"
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

// errChunkType reports a chunk that is JSON but whose known fields have
// other types than OpenAI's (a string where an object belongs, say).
var errChunkType = errors.New("chunk field of the wrong type")

var doneSentinel = []byte("[DONE]")

// DecodeChunk interprets one event's data (or a non-streamed JSON body):
// chat.completion.chunk (choices[].delta), text_completion (choices[].text),
// chat.completion (choices[].message), the usage-only chunk (choices: [] +
// usage), an error object, or the "[DONE]" sentinel.
//
// It runs for every event of every measured response, so it reads the
// chunk in one validating pass (jsonscan) and decodes only the fields it
// reports, with the rules encoding/json applied before: the whole chunk
// must be valid JSON; keys match case-insensitively, the last of duplicate
// keys wins; a known field of the wrong type (choices not an array, a
// non-integer token count, …) makes the chunk an error; unknown fields
// are ignored.
func DecodeChunk(data []byte) (Chunk, error) { return decodeChunk(data, true) }

// decodeChunk is DecodeChunk; without withText it leaves Content empty
// (HasContent is still set), which spares decoding the text of a response
// whose completion text is no longer kept.
//
// The chunk is validated in one pass (jsonscan.ScanMembers) and the values
// it reads are scanned once more each, already valid.
func decodeChunk(data []byte, withText bool) (Chunk, error) {
	data = bytes.TrimSpace(data)
	if bytes.Equal(data, doneSentinel) {
		return Chunk{Done: true}, nil
	}
	if len(data) == 0 || data[0] != '{' {
		return Chunk{}, ErrNotJSON
	}
	var choices, usage jsonscan.Value
	d := chunkDecoder{withText: withText}
	c := &d.c
	err := jsonscan.ScanMembers(data, func(k []byte, v jsonscan.Value) {
		switch {
		case bytes.EqualFold(k, keyChoices):
			choices = v
		case bytes.EqualFold(k, keyUsage):
			usage = v
		case bytes.EqualFold(k, keyError):
			c.Error = v.Kind != jsonscan.Null
		}
	})
	if err != nil {
		return Chunk{}, fmt.Errorf("decode chunk: %w", err)
	}
	var bad bool
	switch usage.Kind {
	case jsonscan.Invalid, jsonscan.Null:
	case jsonscan.Object:
		c.Usage, bad = decodeUsage(usage.Raw)
	default:
		bad = true
	}
	switch choices.Kind {
	case jsonscan.Invalid, jsonscan.Null:
	case jsonscan.Array:
		jsonscan.ScanElements(choices.Raw, func(v jsonscan.Value) {
			if !bad {
				bad = !d.addChoice(v)
			}
		})
	default:
		bad = true
	}
	if bad {
		return Chunk{}, fmt.Errorf("decode chunk: %w", errChunkType)
	}
	return d.c, nil
}

// chunkDecoder builds the Chunk of one event.
type chunkDecoder struct {
	c        Chunk
	withText bool // Content is wanted
}

var (
	keyChoices          = []byte("choices")
	keyUsage            = []byte("usage")
	keyError            = []byte("error")
	keyText             = []byte("text")
	keyDelta            = []byte("delta")
	keyMessage          = []byte("message")
	keyFinishReason     = []byte("finish_reason")
	keyContent          = []byte("content")
	keyReasoningContent = []byte("reasoning_content")
	keyToolCalls        = []byte("tool_calls")
	keyPromptTokens     = []byte("prompt_tokens")
	keyCompletionTokens = []byte("completion_tokens")
)

// decodeUsage reads a usage object; ok is false when a count is not a
// uint32 (or null).
func decodeUsage(raw []byte) (u *Usage, bad bool) {
	u = &Usage{}
	jsonscan.ScanMembers(raw, func(k []byte, v jsonscan.Value) {
		var dst *uint32
		switch {
		case bytes.EqualFold(k, keyPromptTokens):
			dst = &u.PromptTokens
		case bytes.EqualFold(k, keyCompletionTokens):
			dst = &u.CompletionTokens
		default:
			return
		}
		switch v.Kind {
		case jsonscan.Null:
		case jsonscan.Number:
			n, err := strconv.ParseUint(string(v.Raw), 10, 32)
			if err != nil {
				bad = true
				return
			}
			*dst = uint32(n)
		default:
			bad = true
		}
	})
	return u, bad
}

// choice is one element of choices as the chunk states it; a field is
// Invalid when absent.
type choice struct {
	text, delta, message, finishReason jsonscan.Value
}

// addChoice adds one element of choices to c and reports whether its
// fields have the expected types.
func (d *chunkDecoder) addChoice(v jsonscan.Value) bool {
	switch v.Kind {
	case jsonscan.Null:
		return true
	case jsonscan.Object:
	default:
		return false
	}
	var ch choice
	jsonscan.ScanMembers(v.Raw, func(k []byte, v jsonscan.Value) {
		switch {
		case bytes.EqualFold(k, keyText):
			ch.text = v
		case bytes.EqualFold(k, keyDelta):
			ch.delta = v
		case bytes.EqualFold(k, keyMessage):
			ch.message = v
		case bytes.EqualFold(k, keyFinishReason):
			ch.finishReason = v
		}
	})
	finish, ok := optString(ch.finishReason)
	if !ok {
		return false
	}
	if finish != "" && d.c.FinishReason == "" {
		d.c.FinishReason = finish
	}
	// The first of delta, message and text that is present and not null
	// is read, as the wire structs' pointers were; the others must still
	// have their types.
	if !isOptString(ch.text) || !objectOrNull(ch.delta) || !objectOrNull(ch.message) {
		return false
	}
	switch {
	case ch.delta.Kind == jsonscan.Object:
		return d.addMessage(ch.delta.Raw, true)
	case ch.message.Kind == jsonscan.Object:
		return d.addMessage(ch.message.Raw, false)
	}
	d.addText(ch.text)
	return true
}

// addText adds a string field's text, known to be absent, null or a
// string; whether there is any needs no decoding.
func (d *chunkDecoder) addText(v jsonscan.Value) {
	if !nonEmptyString(v) {
		return
	}
	d.c.HasContent = true
	if d.withText {
		s, _ := jsonscan.Unquote(v.Raw)
		d.c.Content += s
	}
}

// nonEmptyString reports whether v is a string that decodes to some text:
// of all JSON strings only "" decodes to none.
func nonEmptyString(v jsonscan.Value) bool { return v.Kind == jsonscan.String && len(v.Raw) > 2 }

// addMessage adds a delta (or a whole message) to the chunk.
func (d *chunkDecoder) addMessage(raw []byte, delta bool) bool {
	var content, reasoning, tools jsonscan.Value
	jsonscan.ScanMembers(raw, func(k []byte, v jsonscan.Value) {
		switch {
		case bytes.EqualFold(k, keyContent):
			content = v
		case delta && bytes.EqualFold(k, keyReasoningContent):
			reasoning = v
		case bytes.EqualFold(k, keyToolCalls):
			tools = v
		}
	})
	if !isOptString(content) || !isOptString(reasoning) {
		return false
	}
	d.addText(content)
	if nonEmptyString(reasoning) || hasJSONValue(tools) {
		d.c.HasContent = true
	}
	return true
}

// isOptString reports whether a field that may be absent or null is
// either, or a string.
func isOptString(v jsonscan.Value) bool {
	return v.Kind == jsonscan.Invalid || v.Kind == jsonscan.Null || v.Kind == jsonscan.String
}

// optString decodes a string field that may be absent or null; ok is false
// for any other type.
func optString(v jsonscan.Value) (string, bool) {
	switch v.Kind {
	case jsonscan.Invalid, jsonscan.Null:
		return "", true
	case jsonscan.String:
		s, _ := jsonscan.Unquote(v.Raw)
		return s, true
	}
	return "", false
}

func objectOrNull(v jsonscan.Value) bool {
	return v.Kind == jsonscan.Invalid || v.Kind == jsonscan.Null || v.Kind == jsonscan.Object
}

// hasJSONValue reports whether a field holds something: present, not
// null, not an empty array.
func hasJSONValue(v jsonscan.Value) bool {
	s := string(v.Raw)
	return s != "" && s != "null" && s != "[]"
}
