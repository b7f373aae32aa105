package extproc

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// decodeChunkWithEncodingJSON is DecodeChunk as it was written with
// encoding/json, the reference the one-pass reader is checked against.
func decodeChunkWithEncodingJSON(data []byte) (Chunk, error) {
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
	var w struct {
		Choices []wireChoice    `json:"choices"`
		Usage   *Usage          `json:"usage"`
		Error   json.RawMessage `json:"error"`
	}
	has := func(raw json.RawMessage) bool {
		s := string(bytes.TrimSpace(raw))
		return s != "" && s != "null" && s != "[]"
	}
	data = bytes.TrimSpace(data)
	if bytes.Equal(data, doneSentinel) {
		return Chunk{Done: true}, nil
	}
	if len(data) == 0 || data[0] != '{' {
		return Chunk{}, ErrNotJSON
	}
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
			if has(ch.Delta.ToolCalls) {
				c.HasContent = true
			}
		case ch.Message != nil:
			if ch.Message.Content != nil && *ch.Message.Content != "" {
				c.Content += *ch.Message.Content
				c.HasContent = true
			}
			if has(ch.Message.ToolCalls) {
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

func sameChunk(a, b Chunk) bool {
	return a.Done == b.Done && a.Content == b.Content && a.HasContent == b.HasContent &&
		a.FinishReason == b.FinishReason && a.Error == b.Error &&
		(a.Usage == nil) == (b.Usage == nil) && (a.Usage == nil || *a.Usage == *b.Usage)
}

func TestDecodeChunkAgreesWithEncodingJSON(t *testing.T) {
	for _, data := range []string{
		`{"choices":[{"delta":{"content":"a\u00e9\n"},"finish_reason":null}],"usage":null}`,
		`{"choices":[{"text":"x","delta":null,"message":{"content":"m"}}]}`,
		`{"choices":[null,{"delta":{"content":"b"}},{"text":"c"}]}`,
		`{"CHOICES":[{"Delta":{"Content":"case"}}]}`,
		`{"choices":[{"delta":{"content":"a"}}],"choices":[]}`,
		`{"usage":{"prompt_tokens":1,"completion_tokens":null}}`,
		`{"usage":{}}`,
		`{"error":null}`,
		`{"error":{}}`,
		`{"choices":"x"}`,
		`{"choices":[1]}`,
		`{"choices":[{"text":1}]}`,
		`{"choices":[{"delta":[]}]}`,
		`{"choices":[{"delta":{"content":5}}]}`,
		`{"choices":[{"delta":{"reasoning_content":true}}]}`,
		`{"choices":[{"delta":{"reasoning_content":null,"content":null}}]}`,
		`{"choices":[{"delta":{"reasoning_content":"","content":""},"text":""}]}`,
		`{"choices":[{"delta":{"reasoning_content":"\u00e9"}}]}`,
		`{"choices":[{"message":{"reasoning_content":true,"content":"ok"}}]}`,
		`{"choices":[{"finish_reason":3}]}`,
		`{"usage":{"prompt_tokens":1.5}}`,
		`{"usage":{"prompt_tokens":-1}}`,
		`{"usage":{"prompt_tokens":4294967296}}`,
		`{"usage":[]}`,
		`{"choices":[{"delta":{"tool_calls":[]}},{"delta":{"tool_calls":{}}}]}`,
		`{"choices":[{"finish_reason":"length"},{"finish_reason":"stop"}]}`,
		`{"choices":[],}`,
	} {
		if msg := agreesWithEncodingJSON([]byte(data)); msg != "" {
			t.Error(msg)
		}
	}
}

// agreesWithEncodingJSON compares DecodeChunk, and decodeChunk without
// the text, with the encoding/json version; it describes a difference.
func agreesWithEncodingJSON(data []byte) string {
	got, err := DecodeChunk(data)
	want, wantErr := decodeChunkWithEncodingJSON(data)
	if (err == nil) != (wantErr == nil) || !sameChunk(got, want) {
		return fmt.Sprintf("DecodeChunk(%q) = %+v, %v; encoding/json %+v, %v", data, got, err, want, wantErr)
	}
	noText, err := decodeChunk(data, false)
	want.Content = ""
	if (err == nil) != (wantErr == nil) || !sameChunk(noText, want) {
		return fmt.Sprintf("decodeChunk(%q) without text = %+v, %v; encoding/json without text %+v, %v", data, noText, err, want, wantErr)
	}
	return ""
}

func FuzzDecodeChunkAgreesWithEncodingJSON(f *testing.F) {
	f.Add([]byte(`{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}`))
	f.Add([]byte(`{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34}}`))
	f.Add([]byte(`{"choices":[{"message":{"content":"x","tool_calls":[{}]},"text":"t"}],"error":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if msg := agreesWithEncodingJSON(data); msg != "" {
			t.Fatal(msg)
		}
	})
}

// BenchmarkDecodeChunk compares DecodeChunk with the encoding/json version
// it replaced on a typical chat.completion.chunk event.
func BenchmarkDecodeChunk(b *testing.B) {
	data := []byte(`{"id":"chatcmpl-9f8e7d6c5b4a","object":"chat.completion.chunk","created":1767225600,"model":"llama","choices":[{"index":0,"delta":{"content":" word"},"logprobs":null,"finish_reason":null}]}`)
	b.Run("scanner", func(b *testing.B) {
		for range b.N {
			DecodeChunk(data)
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		for range b.N {
			decodeChunkWithEncodingJSON(data)
		}
	})
}

// BenchmarkRefusal compares the refusal detector with its word filter and
// the regular expression alone on a completion that is no refusal.
func BenchmarkRefusal(b *testing.B) {
	d, err := NewRefusalDetector(DefaultRefusalPatterns)
	if err != nil {
		b.Fatal(err)
	}
	text := strings.Repeat("Here is a careful answer to the question, in several sentences. ", 32)[:RefusalWindow]
	b.Run("filtered", func(b *testing.B) {
		for range b.N {
			d.Refusal(text)
		}
	})
	b.Run("regexp", func(b *testing.B) {
		for range b.N {
			d.re.MatchString(text)
		}
	})
}
