package filter

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/wasm/filterconfig"
)

// fakeHost is a hand-written Host over an in-memory header list.
type fakeHost struct {
	headers [][2]string
	body    []byte
	status  int // local response status, 0 if none
	reply   []byte
}

func (h *fakeHost) RequestHeaders() ([][2]string, error) { return h.headers, nil }

func (h *fakeHost) SetRequestHeader(name, value string) error {
	h.RemoveRequestHeader(name)
	h.headers = append(h.headers, [2]string{name, strings.Clone(value)}) // as a host copies it
	return nil
}

func (h *fakeHost) RemoveRequestHeader(name string) error {
	kept := h.headers[:0:0]
	for _, p := range h.headers {
		if !strings.EqualFold(p[0], name) {
			kept = append(kept, p)
		}
	}
	h.headers = kept
	return nil
}

func (h *fakeHost) RequestBody(size int) ([]byte, error) { return h.body[:size], nil }

func (h *fakeHost) SendLocalResponse(status int, _ [][2]string, body []byte) error {
	h.status, h.reply = status, body
	return nil
}

func (h *fakeHost) Warn(string) {}

func (h *fakeHost) get(name string) (string, bool) { return Request{Headers: h.headers}.Header(name) }

func testPlugin(t *testing.T) *Plugin {
	t.Helper()
	p, err := NewPlugin(filterconfig.Config{
		Identity:       []filterconfig.Source{{Header: wire.HeaderUserID}, {BodyField: "user"}},
		HashKey:        string(testKey),
		ForceKeys:      []string{filterconfig.ForceKeyDigest("op-key")},
		MaxBodyBytes:   100,
		Models:         []string{"m1"},
		CategoryHeader: "x-task",

		CategoryHeaderTrusted: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	p.random = func() uint64 { return 42 }
	return p
}

func TestStream(t *testing.T) {
	post := func(extra ...[2]string) [][2]string {
		return append([][2]string{{":method", "POST"}, {":path", "/v1/chat/completions?x=1"}}, extra...)
	}
	bucket := func(id string) string { return strconv.FormatUint(Bucket(testKey, id), 10) }
	sample := func(id string) string { return strconv.Itoa(int(NewBucketer(testKey).Keys(id).Sample)) }
	background := func(id string) string { return strconv.Itoa(int(NewBucketer(testKey).Keys(id).Background)) }
	cases := []struct {
		name       string
		headers    [][2]string
		body       string // sent in one chunk after the headers; "" = none
		headersAct Action
		status     int               // local response, 0 = forwarded
		code       string            // error code of the local response
		want       map[string]string // headers after the filter ("" = absent)
	}{
		{"body path holds headers, then routes by the body's model", post([2]string{wire.HeaderUserID, "alice"}), `{"model":"m1"}`, Pause, 0, "",
			map[string]string{wire.HeaderModel: "m1", wire.HeaderBucket: bucket("alice")}},
		{"client model, bucket and sampling keys are replaced", post([2]string{wire.HeaderModel, "evil"}, [2]string{wire.HeaderBucket, "1"}, [2]string{wire.HeaderSample, "0"}, [2]string{wire.HeaderBackground, "0"}, [2]string{wire.HeaderUserID, "alice"}), `{"model":"m1"}`, Pause, 0, "",
			map[string]string{wire.HeaderModel: "m1", wire.HeaderBucket: bucket("alice"), wire.HeaderSample: sample("alice"), wire.HeaderBackground: background("alice")}},
		{"body user field is an identity source", post(), `{"model":"m1","user":"bob"}`, Pause, 0, "",
			map[string]string{wire.HeaderBucket: bucket("bob")}},
		{"no identity gives a random bucket and random sampling keys", post(), `{"model":"m1"}`, Pause, 0, "",
			map[string]string{wire.HeaderBucket: "42", wire.HeaderSample: "42", wire.HeaderBackground: "42"}},
		{"other paths strip the model header and continue", [][2]string{{":method", "GET"}, {":path", "/v1/models"}, {wire.HeaderModel, "m1"}, {wire.HeaderUserID, "alice"}}, "", Continue, 0, "",
			map[string]string{wire.HeaderModel: "", wire.HeaderBucket: bucket("alice")}},
		{"GET on a body path is not body-routed", [][2]string{{":method", "GET"}, {":path", "/v1/chat/completions"}}, "", Continue, 0, "",
			map[string]string{wire.HeaderBucket: "42"}},
		{"force without key is stripped", post([2]string{wire.HeaderForce, "v2"}), `{"model":"m1"}`, Pause, 0, "",
			map[string]string{wire.HeaderForce: "", wire.HeaderKey: ""}},
		{"force with a wrong key is stripped with the key", post([2]string{wire.HeaderForce, "v2"}, [2]string{wire.HeaderKey, "nope"}), `{"model":"m1"}`, Pause, 0, "",
			map[string]string{wire.HeaderForce: "", wire.HeaderKey: ""}},
		{"force with the key survives, the key does not", post([2]string{wire.HeaderForce, "v2"}, [2]string{wire.HeaderKey, "op-key"}), `{"model":"m1"}`, Pause, 0, "",
			map[string]string{wire.HeaderForce: "v2", wire.HeaderKey: ""}},
		{"category comes from the configured header", post([2]string{"x-task", "code"}, [2]string{wire.HeaderCategory, "spoof"}), `{"model":"m1"}`, Pause, 0, "",
			map[string]string{wire.HeaderCategory: "code"}},
		{"client category without the configured header is dropped", post([2]string{wire.HeaderCategory, "spoof"}), `{"model":"m1"}`, Pause, 0, "",
			map[string]string{wire.HeaderCategory: ""}},
		{"content-length over the cap is 413 at once", post([2]string{"content-length", "101"}), "", Pause, 413, "request_too_large", nil},
		{"body over the cap is 413", post(), `{"model":"m1","pad":"` + strings.Repeat("x", 100) + `"}`, Pause, 413, "request_too_large", nil},
		{"malformed body is 400", post(), `{"model"`, Pause, 400, "invalid_request_body", nil},
		{"missing model is 400", post(), `{"user":"u"}`, Pause, 400, "invalid_request_body", nil},
		{"unknown model is 404", post(), `{"model":"m9"}`, Pause, 404, "model_not_found", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := &fakeHost{headers: append([][2]string(nil), c.headers...), body: []byte(c.body)}
			s := testPlugin(t).NewStream(h)
			got := s.OnRequestHeaders(c.body == "" && c.headersAct == Continue)
			if got != c.headersAct {
				t.Fatalf("OnRequestHeaders = %v, want %v", got, c.headersAct)
			}
			if c.body != "" && h.status == 0 {
				want := Continue
				if c.status != 0 {
					want = Pause
				}
				if got := s.OnRequestBody(len(c.body), true); got != want {
					t.Fatalf("OnRequestBody = %v, want %v", got, want)
				}
			}
			if h.status != c.status {
				t.Fatalf("local response %d %s, want %d", h.status, h.reply, c.status)
			}
			if c.status != 0 {
				var e struct {
					Error struct{ Type, Code, Message string }
				}
				if err := json.Unmarshal(h.reply, &e); err != nil || e.Error.Code != c.code || e.Error.Type != "invalid_request_error" {
					t.Fatalf("reply %s (%v), want code %s", h.reply, err, c.code)
				}
				return
			}
			for k, want := range c.want {
				if v, _ := h.get(k); v != want {
					t.Errorf("header %s = %q, want %q", k, v, want)
				}
			}
		})
	}
}

func TestStreamBuffersUntilEndOfBody(t *testing.T) {
	body := `{"model":"m1"}`
	h := &fakeHost{headers: [][2]string{{":method", "POST"}, {":path", "/v1/completions"}}, body: []byte(body)}
	s := testPlugin(t).NewStream(h)
	if got := s.OnRequestHeaders(false); got != Pause {
		t.Fatalf("headers: %v, want pause", got)
	}
	if got := s.OnRequestBody(5, false); got != Pause {
		t.Fatalf("partial body: %v, want pause", got)
	}
	if _, ok := h.get(wire.HeaderModel); ok {
		t.Fatal("model set before the body ended")
	}
	if got := s.OnRequestBody(len(body), false); got != Pause {
		t.Fatalf("whole body, not ended: %v, want pause", got)
	}
	if got := s.OnRequestTrailers(); got != Continue {
		t.Fatalf("trailers end the body: %v, want continue", got)
	}
	if v, _ := h.get(wire.HeaderModel); v != "m1" {
		t.Fatalf("model %q, want m1", v)
	}
}

// The category routes a request to the version an operator chose, so only
// the operator's own hop may set it: without category_header_trusted a
// client's category is dropped whatever header it comes in.
func TestCategoryHeaderIsHonouredOnlyFromATrustedHop(t *testing.T) {
	cases := []struct {
		name    string
		header  string // category_header ("" = x-llmcanary-category)
		trusted bool
		sent    [][2]string
		want    string // x-llmcanary-category forwarded ("" = none)
	}{
		{"untrusted: a client's category is dropped", "", false, [][2]string{{wire.HeaderCategory, "code"}}, ""},
		{"untrusted: the configured header is not read either", "x-task", false, [][2]string{{"x-task", "code"}, {wire.HeaderCategory, "code"}}, ""},
		{"trusted: the category header set by the hop is kept", "", true, [][2]string{{wire.HeaderCategory, "code"}}, "code"},
		{"trusted: the configured header becomes the category", "x-task", true, [][2]string{{"x-task", "code"}, {wire.HeaderCategory, "spoof"}}, "code"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := NewPlugin(filterconfig.Config{
				HashKey: string(testKey), Models: []string{"m1"},
				CategoryHeader: c.header, CategoryHeaderTrusted: c.trusted,
			})
			if err != nil {
				t.Fatal(err)
			}
			h := &fakeHost{headers: append([][2]string{{":method", "POST"}, {":path", "/v1/chat/completions"}}, c.sent...), body: []byte(`{"model":"m1"}`)}
			s := p.NewStream(h)
			s.OnRequestHeaders(false)
			if got := s.OnRequestBody(len(h.body), true); got != Continue || h.status != 0 {
				t.Fatalf("request not forwarded: %v, local response %d %s", got, h.status, h.reply)
			}
			if got, _ := h.get(wire.HeaderCategory); got != c.want {
				t.Fatalf("%s forwarded as %q, want %q", wire.HeaderCategory, got, c.want)
			}
		})
	}
}

// TestARoutedStreamKeepsNothingOfTheBody: the module reads every stream's
// body into one block, so once the body's callback has returned the
// stream must hold no string sharing it (Host.RequestBody).
func TestARoutedStreamKeepsNothingOfTheBody(t *testing.T) {
	p, err := NewPlugin(filterconfig.Config{HashKey: string(testKey), Models: []string{"m1"}})
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"model":"m1","user":"body-user"}`)
	h := &fakeHost{headers: [][2]string{{":method", "POST"}, {":path", "/v1/chat/completions"}}, body: body}
	s := p.NewStream(h)
	if s.OnRequestHeaders(false) != Pause || s.OnRequestBody(len(body), true) != Continue {
		t.Fatalf("request not routed: %d %s", h.status, h.reply)
	}
	if s.model != "" || s.req.BodyFields != nil || s.fields != [2][2]string{} {
		t.Errorf("the stream keeps body strings after routing: model %q, fields %v %v", s.model, s.req.BodyFields, s.fields)
	}
	want := bucketHeader(t, p, "body-user")
	copy(body, strings.Repeat("x", len(body))) // the block serves the next stream
	if got, _ := (Request{Headers: h.headers}).Header(wire.HeaderBucket); got != want {
		t.Errorf("bucket %q after the body's memory changed, want %q (the body user's)", got, want)
	}
}

func bucketHeader(t *testing.T, p *Plugin, identity string) string {
	t.Helper()
	return strconv.FormatUint(p.bucketer.Keys(identity).Bucket, 10)
}
