package filter

import (
	"errors"
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
		{"header first", Request{Headers: [][2]string{{"x-user-id", "h"}, {"cookie", "session=c"}}, BodyFields: map[string]string{"user": "b"}}, "h", true},
		{"header name is case-insensitive", Request{Headers: [][2]string{{"X-User-Id", "h"}}}, "h", true},
		{"empty header falls through to the cookie", Request{Headers: [][2]string{{"x-user-id", ""}, {"cookie", "session=c"}}}, "c", true},
		{"body field last", Request{Headers: [][2]string{{"cookie", "other=c"}}, BodyFields: map[string]string{"user": "b"}}, "b", true},
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
		{"user field read when asked", `{"model":"m1","user":"u7"}`, []string{"user"}, Body{Model: "m1", Fields: map[string]string{"user": "u7"}}, nil},
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
