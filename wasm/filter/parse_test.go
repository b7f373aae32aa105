package filter

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"testing"

	"github.com/llmcanary/llmcanary/wasm/filterconfig"
)

func TestCookieValue(t *testing.T) {
	cases := []struct {
		name    string
		headers []string
		cookie  string
		want    string
		ok      bool
	}{
		{"single cookie", []string{"session=abc"}, "session", "abc", true},
		{"among others with spaces", []string{"a=1;  session=abc ; b=2"}, "session", "abc", true},
		{"quoted value is unquoted", []string{`session="abc"`}, "session", "abc", true},
		{"name is exact, not a prefix", []string{"xsession=bad; session=good"}, "session", "good", true},
		{"name is case-sensitive", []string{"Session=bad"}, "session", "", false},
		{"split over several headers", []string{"a=1", "session=abc"}, "session", "abc", true},
		{"empty value is absent", []string{"session=; session=later"}, "session", "later", true},
		{"value may contain '='", []string{"session=a=b"}, "session", "a=b", true},
		{"missing", []string{"a=1; b=2"}, "session", "", false},
		{"no cookie header", nil, "session", "", false},
		{"pair without '='", []string{"session; a=1"}, "session", "", false},
		{"empty name never matches", []string{"=x"}, "", "", false},
		{"trailing semicolon", []string{"session=abc;"}, "session", "abc", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, ok := CookieValue(c.headers, c.cookie)
			if got != c.want || ok != c.ok {
				t.Fatalf("CookieValue(%q, %q) = %q, %v; want %q, %v", c.headers, c.cookie, got, ok, c.want, c.ok)
			}
		})
	}
}

func TestIdentityTakesTheFirstPresentSource(t *testing.T) {
	sources := []filterconfig.Source{{Header: "x-user-id"}, {Cookie: "session"}, {BodyField: "user"}}
	cases := []struct {
		name string
		req  Request
		want string
		ok   bool
	}{
		{"header first", Request{Headers: [][2]string{{"x-user-id", "h"}, {"cookie", "session=c"}}, BodyFields: [][2]string{{"user", "b"}}}, "h", true},
		{"header name is case-insensitive", Request{Headers: [][2]string{{"X-User-Id", "h"}}}, "h", true},
		{"empty header falls through to the cookie", Request{Headers: [][2]string{{"x-user-id", ""}, {"cookie", "session=c"}}}, "c", true},
		{"body field last", Request{Headers: [][2]string{{"cookie", "other=c"}}, BodyFields: [][2]string{{"user", "b"}}}, "b", true},
		{"nothing present", Request{Headers: [][2]string{{":path", "/"}}}, "", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, ok := Identity(sources, c.req)
			if got != c.want || ok != c.ok {
				t.Fatalf("Identity = %q, %v; want %q, %v", got, ok, c.want, c.ok)
			}
		})
	}
}

func TestParseBody(t *testing.T) {
	cases := []struct {
		name   string
		body   string
		fields []string
		want   Body
		err    error
	}{
		{"chat request", `{"model":"m1","messages":[{"role":"user","content":"hi"}]}`, nil, Body{Model: "m1"}, nil},
		{"user field read when asked", `{"model":"m1","user":"u7"}`, []string{"user"}, Body{Model: "m1", Fields: [][2]string{{"user", "u7"}}}, nil},
		{"non-string field ignored", `{"model":"m1","user":42}`, []string{"user"}, Body{Model: "m1"}, nil},
		{"escaped model", `{"model":"m\u0031"}`, nil, Body{Model: "m1"}, nil},
		{"malformed", `{"model":`, nil, Body{}, ErrMalformedBody},
		{"empty body", ``, nil, Body{}, ErrMalformedBody},
		{"array", `["m1"]`, nil, Body{}, ErrMalformedBody},
		{"null", `null`, nil, Body{}, ErrMalformedBody},
		{"trailing garbage", `{"model":"m1"} x`, nil, Body{}, ErrMalformedBody},
		{"missing model", `{"messages":[]}`, nil, Body{}, ErrMissingModel},
		{"null model", `{"model":null}`, nil, Body{}, ErrMissingModel},
		{"empty model", `{"model":""}`, nil, Body{}, ErrMissingModel},
		{"numeric model", `{"model":7}`, nil, Body{}, ErrModelNotText},
		{"duplicate model: the last wins, as encoding/json", `{"model":"a","model":"m1"}`, nil, Body{Model: "m1"}, nil},
		{"duplicate model: a last null means no model", `{"model":"m1","model":null}`, nil, Body{}, ErrMissingModel},
		{"duplicate model: a last number is not text", `{"model":"m1","model":[1]}`, nil, Body{}, ErrModelNotText},
		{"duplicate user: the last wins", `{"user":"u1","model":"m1","user":"u2"}`, []string{"user"}, Body{Model: "m1", Fields: [][2]string{{"user", "u2"}}}, nil},
		{"a nested model is not the model", `{"messages":[{"model":"x"}],"meta":{"model":"y"}}`, nil, Body{}, ErrMissingModel},
		{"nested model before the top-level one", `{"meta":{"model":"y","user":"z"},"model":"m1"}`, []string{"user"}, Body{Model: "m1"}, nil},
		{"escaped key names the model", `{"mod\u0065l":"m1"}`, nil, Body{Model: "m1"}, nil},
		{"key case matters", `{"Model":"m1"}`, nil, Body{}, ErrMissingModel},
		{"whitespace around everything", " \n{ \"model\" :\t\"m1\" ,\r\n\"user\" : \"u\" } \n", []string{"user"}, Body{Model: "m1", Fields: [][2]string{{"user", "u"}}}, nil},
		{"strings with quotes and braces inside", `{"messages":[{"content":"\"model\":\"x\"}{"}],"model":"m1"}`, nil, Body{Model: "m1"}, nil},
		{"invalid JSON after the model is malformed", `{"model":"m1","messages":[}`, nil, Body{}, ErrMalformedBody},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseBody([]byte(c.body), c.fields...)
			if !errors.Is(err, c.err) {
				t.Fatalf("err = %v, want %v", err, c.err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("ParseBody = %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestForceKeysAccepts(t *testing.T) {
	keys, err := ParseForceKeys([]string{filterconfig.ForceKeyDigest("old-key"), filterconfig.ForceKeyDigest("new-key")})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		keys ForceKeys
		key  string
		want bool
	}{
		{"current key", keys, "new-key", true},
		{"key being rotated out", keys, "old-key", true},
		{"wrong key", keys, "guess", false},
		{"empty key", keys, "", false},
		{"the digest itself is not a key", keys, filterconfig.ForceKeyDigest("new-key"), false},
		{"no keys configured", nil, "new-key", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := c.keys.Accepts(c.key); got != c.want {
				t.Fatalf("Accepts(%q) = %v, want %v", c.key, got, c.want)
			}
		})
	}
	if _, err := ParseForceKeys([]string{"not-hex"}); err == nil {
		t.Error("ParseForceKeys accepted a non-digest")
	}
}

// parseBodyWithEncodingJSON is ParseBody as it was written with
// encoding/json, the reference for the one-pass scanner.
func parseBodyWithEncodingJSON(data []byte, fields ...string) (Body, error) {
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
			b.Fields = append(b.Fields, [2]string{f, s})
		}
	}
	return b, nil
}

func FuzzParseBodyAgreesWithEncodingJSON(f *testing.F) {
	f.Add([]byte(`{"model":"m1","user":"u"}`))
	f.Add([]byte(`{"model":"m\u0031","model":7,"user":"\ud83d"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := ParseBody(data, "user")
		want, wantErr := parseBodyWithEncodingJSON(data, "user")
		if !reflect.DeepEqual(got, want) || (err == nil) != (wantErr == nil) ||
			(err != nil && err.Error() != wantErr.Error()) {
			t.Fatalf("ParseBody(%q) = %+v, %v; encoding/json %+v, %v", data, got, err, want, wantErr)
		}
	})
}

func FuzzParseBody(f *testing.F) {
	f.Add([]byte(`{"model":"m1","user":"u"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := ParseBody(data, "user")
		if err == nil && b.Model == "" {
			t.Fatalf("accepted %q without a model", data)
		}
		if err != nil && (b.Model != "" || b.Fields != nil) {
			t.Fatalf("error %v with a non-empty result %+v", err, b)
		}
	})
}

func FuzzCookieValue(f *testing.F) {
	f.Add("a=1; session=abc", "session")
	f.Fuzz(func(t *testing.T, header, name string) {
		v, ok := CookieValue([]string{header}, name)
		if ok == (v == "") {
			t.Fatalf("CookieValue(%q, %q) = %q, %v", header, name, v, ok)
		}
		if ok && (len(v) > len(header) || name == "") {
			t.Fatalf("CookieValue(%q, %q) = %q: not part of the header", header, name, v)
		}
	})
}
