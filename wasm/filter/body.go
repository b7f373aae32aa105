package filter

import (
	"errors"
	"unsafe"

	"github.com/llmcanary/llmcanary/internal/jsonscan"
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
	// Fields holds the requested top-level fields whose values are
	// non-empty strings, as (name, value) in the order they were asked for.
	Fields [][2]string
}

// ParseBody parses an OpenAI request body, returning its model and the
// top-level string fields named in fields (fields of other types are
// ignored). The body must be one valid JSON object with a non-empty string
// model.
//
// It reads the body in one pass without decoding it (jsonscan.ScanMembers) and
// decodes only the values it returns, with encoding/json's rules, which
// decided before: keys match exactly after unescaping, and of duplicate
// keys the last one wins ({"model":"a","model":"b"} names "b"), also when
// the last one is null or not a string.
//
// A value without escapes is not copied: the strings returned may share
// data's memory, so data must not change while they are in use.
func ParseBody(data []byte, fields ...string) (Body, error) { return parseBody(data, nil, fields) }

// parseBody is ParseBody appending the fields found to dst.
func parseBody(data []byte, dst [][2]string, fields []string) (Body, error) {
	var model jsonscan.Value
	var small [4]jsonscan.Value // found values by index in fields, without allocating for the usual few
	var found []jsonscan.Value
	if len(fields) <= len(small) {
		found = small[:len(fields)]
	} else {
		found = make([]jsonscan.Value, len(fields))
	}
	err := jsonscan.ScanMembers(data, func(key []byte, v jsonscan.Value) {
		if string(key) == "model" {
			model = v
		}
		for i, f := range fields {
			if string(key) == f {
				found[i] = v
			}
		}
	})
	if err != nil {
		return Body{}, ErrMalformedBody
	}
	switch model.Kind {
	case jsonscan.Invalid, jsonscan.Null:
		return Body{}, ErrMissingModel
	case jsonscan.String:
	default:
		raw := string(model.Raw)
		n := 0
		for i := range raw { // the first 40 runes, as fmt's %.40s
			if n == 40 {
				raw = raw[:i]
				break
			}
			n++
		}
		return Body{}, modelNotText{raw: raw}
	}
	b := Body{Model: unquote(model.Raw), Fields: dst}
	if b.Model == "" {
		return Body{}, ErrMissingModel
	}
	for i, v := range found {
		if v.Kind != jsonscan.String {
			continue
		}
		if s := unquote(v.Raw); s != "" {
			b.Fields = append(b.Fields, [2]string{fields[i], s})
		}
	}
	return b, nil
}

// unquote decodes a JSON string that jsonscan has validated. One of plain
// ASCII, the usual model or user name, shares raw's memory rather than
// being copied; any other goes through jsonscan.Unquote (escapes, and
// invalid UTF-8 made U+FFFD as encoding/json does).
func unquote(raw []byte) string {
	if len(raw) > 2 {
		s := raw[1 : len(raw)-1]
		ascii := true
		for _, c := range s {
			if c == '\\' || c >= 0x80 {
				ascii = false
				break
			}
		}
		if ascii {
			return unsafe.String(&s[0], len(s))
		}
	}
	s, _ := jsonscan.Unquote(raw)
	return s
}

// modelNotText is ErrModelNotText with the start of the value found.
type modelNotText struct{ raw string }

func (e modelNotText) Error() string { return ErrModelNotText.Error() + ", got " + e.raw }
func (e modelNotText) Unwrap() error { return ErrModelNotText }
