package sim

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
)

// apiRequest is the part of an OpenAI chat or completions request the
// simulator reads.
type apiRequest struct {
	Model         string          `json:"model"`
	Messages      []apiMessage    `json:"messages"`
	Prompt        json.RawMessage `json:"prompt"`
	Stream        bool            `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	MaxTokens           *int   `json:"max_tokens"`
	MaxCompletionTokens *int   `json:"max_completion_tokens"`
	User                string `json:"user"`
}

type apiMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

// text is a message's content: a string, or the text parts of an array.
func (m apiMessage) text() (string, error) {
	c := m.Content
	if len(c) == 0 || string(c) == "null" {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(c, &s); err == nil {
		return s, nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(c, &parts); err != nil {
		return "", errors.New("message content must be a string or an array of content parts")
	}
	var b strings.Builder
	for _, p := range parts {
		b.WriteString(p.Text)
	}
	return b.String(), nil
}

// promptText reads a completions prompt: a string, an array of strings, or
// token ids (counted, not decoded). extraTokens is the number of token ids.
func promptText(raw json.RawMessage) (text string, extraTokens int, err error) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, 0, nil
	}
	var ss []string
	if json.Unmarshal(raw, &ss) == nil {
		return strings.Join(ss, ""), 0, nil
	}
	var ids []int
	if json.Unmarshal(raw, &ids) == nil {
		return "", len(ids), nil
	}
	var idss [][]int
	if json.Unmarshal(raw, &idss) == nil {
		n := 0
		for _, ids := range idss {
			n += len(ids)
		}
		return "", n, nil
	}
	return "", 0, errors.New("prompt must be a string, an array of strings or token ids")
}

type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	TotalTokens      int `json:"total_tokens"`
	CompletionTokens int `json:"completion_tokens"`
}

// rawNull is the JSON literal null, for fields vLLM sends as null rather
// than omits.
var rawNull = json.RawMessage("null")

type chatDelta struct {
	Role    string  `json:"role,omitempty"`
	Content *string `json:"content,omitempty"`
}

type chatChunkChoice struct {
	Index        int             `json:"index"`
	Delta        chatDelta       `json:"delta"`
	Logprobs     json.RawMessage `json:"logprobs"`
	FinishReason *string         `json:"finish_reason"`
	StopReason   json.RawMessage `json:"stop_reason,omitempty"`
}

type textChunkChoice struct {
	Index        int             `json:"index"`
	Text         string          `json:"text"`
	Logprobs     json.RawMessage `json:"logprobs"`
	FinishReason *string         `json:"finish_reason"`
	StopReason   json.RawMessage `json:"stop_reason"`
}

// chunk is one streamed event. Choices holds []chatChunkChoice or
// []textChunkChoice; Usage is omitted, null, or a usage object.
type chunk struct {
	ID      string          `json:"id"`
	Object  string          `json:"object"`
	Created int64           `json:"created"`
	Model   string          `json:"model"`
	Choices any             `json:"choices"`
	Usage   json.RawMessage `json:"usage,omitempty"`
}

type chatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type chatChoice struct {
	Index        int             `json:"index"`
	Message      chatMessage     `json:"message"`
	Logprobs     json.RawMessage `json:"logprobs"`
	FinishReason string          `json:"finish_reason"`
	StopReason   json.RawMessage `json:"stop_reason"`
}

type textChoice struct {
	Index        int             `json:"index"`
	Text         string          `json:"text"`
	Logprobs     json.RawMessage `json:"logprobs"`
	FinishReason string          `json:"finish_reason"`
	StopReason   json.RawMessage `json:"stop_reason"`
}

// completion is a whole non-streamed answer.
type completion struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices any    `json:"choices"`
	Usage   usage  `json:"usage"`
}

// apiError is the OpenAI error body: {"error": {...}}.
type apiError struct {
	Error apiErrorBody `json:"error"`
}

type apiErrorBody struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    any     `json:"code"`
}

// Error types used in apiErrorBody.Type.
const (
	errInvalidRequest = "invalid_request_error"
	errServer         = "server_error"
	errRateLimit      = "rate_limit_error"
)

// writeError sends an OpenAI-style error. code may be nil.
func writeError(w http.ResponseWriter, status int, typ string, code any, param, msg string) {
	body := apiError{Error: apiErrorBody{Message: msg, Type: typ, Code: code}}
	if param != "" {
		body.Error.Param = &param
	}
	writeJSON(w, status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("content-type", "application/json")
	h.Set("content-length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}
