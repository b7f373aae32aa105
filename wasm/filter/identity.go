package filter

import (
	"strings"

	"github.com/llmcanary/llmcanary/wasm/filterconfig"
)

// CookieValue returns the value of the cookie named name in the Cookie
// header values, in order (HTTP/2 may split cookies over several headers).
// It follows RFC 6265's cookie-string: pairs separated by ";", optional
// whitespace, names compared exactly, a value optionally in double quotes
// (removed). The first non-empty match wins.
func CookieValue(cookieHeaders []string, name string) (string, bool) {
	if name == "" {
		return "", false
	}
	for _, h := range cookieHeaders {
		for len(h) > 0 {
			var part string
			part, h, _ = strings.Cut(h, ";")
			part = strings.TrimSpace(part)
			k, v, ok := strings.Cut(part, "=")
			if !ok || strings.TrimSpace(k) != name {
				continue
			}
			v = strings.TrimSpace(v)
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			if v != "" {
				return v, true
			}
		}
	}
	return "", false
}

// Request is what identity resolution sees of a request: its headers (names
// lower-case, as Envoy presents them) and, on body-routed paths, the body's
// top-level string fields (name, value), in the order of the configured
// body-field sources.
type Request struct {
	Headers    [][2]string
	BodyFields [][2]string
}

// Header returns the first value of the header named name, compared
// case-insensitively.
func (r Request) Header(name string) (string, bool) {
	for _, h := range r.Headers {
		if sameHeaderName(h[0], name) {
			return h[1], true
		}
	}
	return "", false
}

// HeaderValues returns every value of the header named name.
func (r Request) HeaderValues(name string) []string {
	var vs []string
	for _, h := range r.Headers {
		if sameHeaderName(h[0], name) {
			vs = append(vs, h[1])
		}
	}
	return vs
}

// BodyField returns the value of the body's string field name.
func (r Request) BodyField(name string) string {
	for _, f := range r.BodyFields {
		if f[0] == name {
			return f[1]
		}
	}
	return ""
}

// sameHeaderName compares header names case-insensitively; the lengths
// first, so the usual mismatch costs one comparison.
func sameHeaderName(a, b string) bool {
	return len(a) == len(b) && (a == b || strings.EqualFold(a, b))
}

// Identity returns the identity from the first source, in order, that is
// present and non-empty, and false when none is.
func Identity(sources []filterconfig.Source, r Request) (string, bool) {
	for _, s := range sources {
		var v string
		switch {
		case s.Header != "":
			v, _ = r.Header(s.Header)
		case s.Cookie != "":
			v, _ = CookieValue(r.HeaderValues("cookie"), s.Cookie)
		case s.BodyField != "":
			v = r.BodyField(s.BodyField)
		}
		if v != "" {
			return v, true
		}
	}
	return "", false
}
