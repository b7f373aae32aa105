// Package jsonscan reads JSON in one pass without decoding it: it validates
// a document as encoding/json would and hands out the raw bytes of values
// so that a caller decodes only the few it needs. It exists for two hot
// paths: the wasm filter, which reads a request body's model (there
// encoding/json cost a map and a string per member, and 1.4 MB of module
// that V8 compiles before Envoy serves), and the telemetry service, which
// reads every SSE event of every measured response.
//
// What it accepts and how it decodes strings follow encoding/json: RFC 8259
// syntax, whitespace around the document, nesting up to 10000 levels, and
// strings whose invalid UTF-8 or lone surrogate escapes decode to U+FFFD.
package jsonscan

import (
	"errors"
	"unicode/utf16"
	"unicode/utf8"
)

// ErrSyntax reports data that is not valid JSON, or not of the expected
// kind.
var ErrSyntax = errors.New("invalid json")

// maxDepth is encoding/json's nesting limit.
const maxDepth = 10000

// Kind is the type of a JSON value.
type Kind uint8

// Kinds of value.
const (
	Invalid Kind = iota
	Null
	Bool
	Number
	String
	Array
	Object
)

// Value is one JSON value as it appears in the document.
type Value struct {
	Kind Kind
	// Raw is the value's text, quotes included for a string.
	Raw []byte
}

// Members validates data as one JSON object (with optional whitespace
// around it) and calls fn for each of its members in document order, with
// the member's key (unescaped) and value. Duplicate keys are all reported;
// a caller that wants encoding/json's rule, which is that the last one
// wins, keeps the last. Nothing is reported for invalid data: the whole
// document is validated before fn is first called. The key and value alias
// data (a key with escapes or non-ASCII bytes is decoded into a new slice,
// invalid UTF-8 repaired as encoding/json does).
func Members(data []byte, fn func(key []byte, v Value)) error {
	end, err := skipValue(data, skipSpace(data, 0), 0)
	if err != nil || skipSpace(data, end) != len(data) {
		return ErrSyntax
	}
	i := skipSpace(data, 0)
	if data[i] != '{' {
		return ErrSyntax
	}
	i = skipSpace(data, i+1)
	if data[i] == '}' {
		return nil
	}
	for {
		kEnd, _ := skipString(data, i)
		key := data[i+1 : kEnd-1]
		if !plain(key) {
			s, _ := Unquote(data[i:kEnd])
			key = []byte(s)
		}
		i = skipSpace(data, skipSpace(data, kEnd)+1) // past ':'
		vEnd, _ := skipValue(data, i, 1)
		fn(key, Value{Kind: kindAt(data[i]), Raw: data[i:vEnd]})
		i = skipSpace(data, vEnd)
		if data[i] == '}' {
			return nil
		}
		i = skipSpace(data, i+1) // past ','
	}
}

// Elements validates data as one JSON array and calls fn for each element
// in order.
func Elements(data []byte, fn func(v Value)) error {
	end, err := skipValue(data, skipSpace(data, 0), 0)
	if err != nil || skipSpace(data, end) != len(data) {
		return ErrSyntax
	}
	i := skipSpace(data, 0)
	if data[i] != '[' {
		return ErrSyntax
	}
	i = skipSpace(data, i+1)
	if data[i] == ']' {
		return nil
	}
	for {
		vEnd, _ := skipValue(data, i, 1)
		fn(Value{Kind: kindAt(data[i]), Raw: data[i:vEnd]})
		i = skipSpace(data, vEnd)
		if data[i] == ']' {
			return nil
		}
		i = skipSpace(data, i+1)
	}
}

func kindAt(c byte) Kind {
	switch c {
	case 'n':
		return Null
	case 't', 'f':
		return Bool
	case '"':
		return String
	case '[':
		return Array
	case '{':
		return Object
	}
	return Number
}

// plain reports whether the inside of a string is its own text: no escape
// and nothing but ASCII (so no invalid UTF-8 to repair).
func plain(b []byte) bool {
	for _, c := range b {
		if c == '\\' || c >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

func skipSpace(data []byte, i int) int {
	for i < len(data) {
		switch data[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// skipValue returns the end of the value that starts at data[i].
func skipValue(data []byte, i, depth int) (int, error) {
	if i >= len(data) {
		return 0, ErrSyntax
	}
	switch c := data[i]; {
	case c == '"':
		return skipString(data, i)
	case c == '{' || c == '[':
		if depth >= maxDepth {
			return 0, ErrSyntax
		}
		return skipComposite(data, i, depth+1)
	case c == 't':
		return skipLiteral(data, i, "true")
	case c == 'f':
		return skipLiteral(data, i, "false")
	case c == 'n':
		return skipLiteral(data, i, "null")
	case c == '-' || c >= '0' && c <= '9':
		return skipNumber(data, i)
	}
	return 0, ErrSyntax
}

func skipComposite(data []byte, i, depth int) (int, error) {
	obj := data[i] == '{'
	closer := byte(']')
	if obj {
		closer = '}'
	}
	i = skipSpace(data, i+1)
	if i < len(data) && data[i] == closer {
		return i + 1, nil
	}
	for {
		var err error
		if obj {
			if i >= len(data) || data[i] != '"' {
				return 0, ErrSyntax
			}
			if i, err = skipString(data, i); err != nil {
				return 0, err
			}
			i = skipSpace(data, i)
			if i >= len(data) || data[i] != ':' {
				return 0, ErrSyntax
			}
			i = skipSpace(data, i+1)
		}
		if i, err = skipValue(data, i, depth); err != nil {
			return 0, err
		}
		i = skipSpace(data, i)
		if i >= len(data) {
			return 0, ErrSyntax
		}
		switch data[i] {
		case closer:
			return i + 1, nil
		case ',':
			i = skipSpace(data, i+1)
		default:
			return 0, ErrSyntax
		}
	}
}

func skipLiteral(data []byte, i int, lit string) (int, error) {
	if len(data)-i < len(lit) || string(data[i:i+len(lit)]) != lit {
		return 0, ErrSyntax
	}
	return i + len(lit), nil
}

// stringSpecial marks the bytes that end a run of plain string content:
// the closing quote, a backslash, and the control characters JSON forbids.
var stringSpecial = func() (t [256]bool) {
	for c := 0; c < 0x20; c++ {
		t[c] = true
	}
	t['"'], t['\\'] = true, true
	return t
}()

// skipString returns the end of the string whose opening quote is data[i].
// Control characters must be escaped; escapes must be valid; bytes above
// 0x7f are taken as they are (Unquote repairs invalid UTF-8).
func skipString(data []byte, i int) (int, error) {
	i++
	for i < len(data) {
		for i < len(data) && !stringSpecial[data[i]] { // the common run of plain bytes
			i++
		}
		if i >= len(data) {
			break
		}
		c := data[i]
		switch {
		case c == '"':
			return i + 1, nil
		case c < 0x20:
			return 0, ErrSyntax
		case c == '\\':
			if i+1 >= len(data) {
				return 0, ErrSyntax
			}
			switch data[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if len(data)-i < 6 || hex4(data[i+2:i+6]) < 0 {
					return 0, ErrSyntax
				}
				i += 6
			default:
				return 0, ErrSyntax
			}
		default:
			i++
		}
	}
	return 0, ErrSyntax
}

// skipNumber checks RFC 8259's number grammar:
// -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?
func skipNumber(data []byte, i int) (int, error) {
	digits := func(i int) int {
		for i < len(data) && data[i] >= '0' && data[i] <= '9' {
			i++
		}
		return i
	}
	if data[i] == '-' {
		i++
	}
	switch {
	case i < len(data) && data[i] == '0':
		i++
	case i < len(data) && data[i] >= '1' && data[i] <= '9':
		i = digits(i + 1)
	default:
		return 0, ErrSyntax
	}
	if i < len(data) && data[i] == '.' {
		j := digits(i + 1)
		if j == i+1 {
			return 0, ErrSyntax
		}
		i = j
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		i++
		if i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		j := digits(i)
		if j == i {
			return 0, ErrSyntax
		}
		i = j
	}
	return i, nil
}

// hex4 decodes four hex digits, or returns -1.
func hex4(b []byte) rune {
	var r rune
	for _, c := range b[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return -1
		}
		r = r*16 + rune(c)
	}
	return r
}

// Unquote decodes the raw JSON string raw (quotes included) as
// encoding/json does, and reports whether raw is a valid JSON string.
func Unquote(raw []byte) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' {
		return "", false
	}
	if end, err := skipString(raw, 0); err != nil || end != len(raw) {
		return "", false
	}
	s := raw[1 : len(raw)-1]
	if plain(s) {
		return string(s), true
	}
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '\\':
			switch s[i+1] {
			case 'b':
				out = append(out, '\b')
			case 'f':
				out = append(out, '\f')
			case 'n':
				out = append(out, '\n')
			case 'r':
				out = append(out, '\r')
			case 't':
				out = append(out, '\t')
			case 'u':
				r := hex4(s[i+2:])
				i += 6
				if utf16.IsSurrogate(r) {
					r2 := rune(-1)
					if len(s)-i >= 6 && s[i] == '\\' && s[i+1] == 'u' {
						r2 = hex4(s[i+2:])
					}
					if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
						i += 6
						r = dec
					} else {
						r = utf8.RuneError
					}
				}
				out = utf8.AppendRune(out, r)
				continue
			default: // '"', '\\', '/'
				out = append(out, s[i+1])
			}
			i += 2
		case c < utf8.RuneSelf:
			out = append(out, c)
			i++
		default:
			r, size := utf8.DecodeRune(s[i:])
			i += size
			out = utf8.AppendRune(out, r)
		}
	}
	return string(out), true
}

// String names the kind as JSON does: "null", "boolean", "number",
// "string", "array", "object"; "invalid" for Invalid.
func (k Kind) String() string {
	switch k {
	case Null:
		return "null"
	case Bool:
		return "boolean"
	case Number:
		return "number"
	case String:
		return "string"
	case Array:
		return "array"
	case Object:
		return "object"
	}
	return "invalid"
}

// Next returns the first JSON value in data (after optional whitespace)
// and the bytes that follow it. It validates only that value; rest is
// whatever comes after, so a caller that wants exactly one document
// checks that rest holds only whitespace (see OnlySpace).
func Next(data []byte) (v Value, rest []byte, err error) {
	i := skipSpace(data, 0)
	end, err := skipValue(data, i, 0)
	if err != nil {
		return Value{}, nil, ErrSyntax
	}
	return Value{Kind: kindAt(data[i]), Raw: data[i:end]}, data[end:], nil
}

// OnlySpace reports whether data holds nothing but JSON whitespace.
func OnlySpace(data []byte) bool { return skipSpace(data, 0) == len(data) }
