package filter

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Errors of ParseBody; the filter answers each with a 400.
var (
	ErrMalformedBody = errors.New("request body is not a JSON object")
	ErrMissingModel  = errors.New("request body has no model")
	ErrModelNotText  = errors.New("model must be a string")
)

// Body is what the filter reads from an OpenAI request body.
type Body struct {
	// Model is the body's "model".
	Model string
	// Fields holds the requested top-level fields whose values are strings.
	Fields map[string]string
}

// ParseBody parses an OpenAI request body, returning its model and the
// top-level string fields named in fields (fields of other types are
// ignored). The body must be one JSON object with a non-empty string model.
func ParseBody(data []byte, fields ...string) (Body, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil || top == nil {
		return Body{}, ErrMalformedBody
	}
	raw, ok := top["model"]
	if !ok || string(raw) == "null" {
		return Body{}, ErrMissingModel
	}
	var b Body
	if err := json.Unmarshal(raw, &b.Model); err != nil {
		return Body{}, fmt.Errorf("%w, got %.40s", ErrModelNotText, raw)
	}
	if b.Model == "" {
		return Body{}, ErrMissingModel
	}
	for _, f := range fields {
		raw, ok := top[f]
		if !ok {
			continue
		}
		var s string
		if json.Unmarshal(raw, &s) == nil && s != "" {
			if b.Fields == nil {
				b.Fields = map[string]string{}
			}
			b.Fields[f] = s
		}
	}
	return b, nil
}
