package extproc

import (
	"strings"
	"testing"
)

// feedAll runs the parser over chunks and returns every event's data.
func feedAll(chunks ...string) []string {
	var p SSEParser
	var out []string
	emit := func(d []byte) { out = append(out, string(d)) }
	for _, c := range chunks {
		p.Feed([]byte(c), emit)
	}
	p.Flush(emit)
	return out
}

func TestSSEParserSplitsEvents(t *testing.T) {
	tests := []struct {
		name   string
		chunks []string
		want   []string
	}{
		{"one event per chunk", []string{"data: a\n\n", "data: b\n\n"}, []string{"a", "b"}},
		{"several events in one chunk", []string{"data: a\n\ndata: b\n\ndata: [DONE]\n\n"}, []string{"a", "b", "[DONE]"}},
		{"event split mid-line", []string{"da", "ta: hel", "lo\n", "\n"}, []string{"hello"}},
		{"CRLF line ends", []string{"data: a\r\n\r\ndata: b\r\n\r\n"}, []string{"a", "b"}},
		{"CRLF split between chunks", []string{"data: a\r", "\n\r", "\ndata: b\r\n\r\n"}, []string{"a", "b"}},
		{"bare CR line ends", []string{"data: a\r\rdata: b\r\r"}, []string{"a", "b"}},
		{"comments and keep-alives are ignored", []string{": ping\n\n", "data: a\n", ": mid-event comment\n\n"}, []string{"a"}},
		{"other fields are ignored", []string{"event: message\nid: 7\nretry: 10\ndata: a\n\n"}, []string{"a"}},
		{"multi-line data joined by newline", []string{"data: a\ndata: b\n\n"}, []string{"a\nb"}},
		{"data without the optional space", []string{"data:a\n\n"}, []string{"a"}},
		{"empty data line is an empty event", []string{"data:\n\n"}, []string{""}},
		{"blank lines without data emit nothing", []string{"\n\n\n"}, nil},
		{"last event without its blank line is flushed", []string{"data: a\n\ndata: [DONE]"}, []string{"a", "[DONE]"}},
		{"byte by byte", strings.Split("data: x\r\n\r\ndata: y\n\n", ""), []string{"x", "y"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := feedAll(tt.chunks...)
			if strings.Join(got, "|") != strings.Join(tt.want, "|") || len(got) != len(tt.want) {
				t.Fatalf("events = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestDecodeChunk(t *testing.T) {
	tests := []struct {
		name string
		data string
		want Chunk
	}{
		{"done sentinel", "[DONE]", Chunk{Done: true}},
		{"chat delta with content",
			`{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}`,
			Chunk{Content: "Hi", HasContent: true}},
		{"chat role-only first delta carries no token",
			`{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}`,
			Chunk{}},
		{"chat final delta with finish reason",
			`{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`,
			Chunk{FinishReason: "stop"}},
		{"usage chunk with empty choices",
			`{"object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}`,
			Chunk{Usage: &Usage{PromptTokens: 12, CompletionTokens: 34}}},
		{"text completion",
			`{"object":"text_completion","choices":[{"index":0,"text":" world","finish_reason":null}]}`,
			Chunk{Content: " world", HasContent: true}},
		{"text completion final",
			`{"object":"text_completion","choices":[{"index":0,"text":"","finish_reason":"length"}]}`,
			Chunk{FinishReason: "length"}},
		{"non-streamed chat completion",
			`{"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2}}`,
			Chunk{Content: "Hello there", HasContent: true, FinishReason: "stop", Usage: &Usage{PromptTokens: 5, CompletionTokens: 2}}},
		{"reasoning delta is a token without text",
			`{"choices":[{"delta":{"reasoning_content":"hmm"}}]}`,
			Chunk{HasContent: true}},
		{"tool call delta is a token",
			`{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}]}`,
			Chunk{HasContent: true}},
		{"error object",
			`{"error":{"message":"overloaded","type":"server_error"}}`,
			Chunk{Error: true}},
		{"surrounding whitespace", "  [DONE] \n", Chunk{Done: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeChunk([]byte(tt.data))
			if err != nil {
				t.Fatalf("DecodeChunk: %v", err)
			}
			if got.Done != tt.want.Done || got.Content != tt.want.Content || got.HasContent != tt.want.HasContent ||
				got.FinishReason != tt.want.FinishReason || got.Error != tt.want.Error ||
				(got.Usage == nil) != (tt.want.Usage == nil) || (got.Usage != nil && *got.Usage != *tt.want.Usage) {
				t.Fatalf("DecodeChunk = %+v (usage %v), want %+v (usage %v)", got, got.Usage, tt.want, tt.want.Usage)
			}
		})
	}
}

func TestDecodeChunkRejectsNonJSON(t *testing.T) {
	for _, data := range []string{"", "hello", "[1,2]", `{"choices":`} {
		if _, err := DecodeChunk([]byte(data)); err == nil {
			t.Errorf("DecodeChunk(%q) = nil error, want an error", data)
		}
	}
}

// FuzzSSEParser checks that however a body is cut into chunks, the parser
// yields the same events as when it gets the body whole, and never panics.
func FuzzSSEParser(f *testing.F) {
	f.Add([]byte("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: [DONE]\n\n"), uint8(3))
	f.Add([]byte("data: a\r\n\r\n: c\r\ndata: b\r\ndata: c\r\n\r\n"), uint8(1))
	f.Add([]byte("data: a\r\rdata: b\r\r"), uint8(5))
	f.Add([]byte("event: x\nid: 1\ndata:\n\n\n\ndata: [DONE]"), uint8(2))
	f.Fuzz(func(t *testing.T, body []byte, cut uint8) {
		whole := feedAll(string(body))
		step := int(cut%16) + 1
		var chunks []string
		for i := 0; i < len(body); i += step {
			chunks = append(chunks, string(body[i:min(i+step, len(body))]))
		}
		split := feedAll(chunks...)
		if len(whole) != len(split) {
			t.Fatalf("whole body gave %d events, split by %d gave %d", len(whole), step, len(split))
		}
		for i := range whole {
			if whole[i] != split[i] {
				t.Fatalf("event %d: whole %q, split %q", i, whole[i], split[i])
			}
			if strings.Contains(whole[i], "\r") {
				t.Fatalf("event %d keeps a CR: %q", i, whole[i])
			}
			_, _ = DecodeChunk([]byte(whole[i]))
		}
	})
}
