package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llmcanary/llmcanary/internal/wire"
)

// openAIError checks that a gateway answer is an OpenAI-style JSON error
// ({"error":{"message","type","code"}}) and returns its code.
func openAIError(t *testing.T, a answer) string {
	t.Helper()
	if ct := a.header.Get("content-type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("status %d answered with content-type %q, want application/json: %.200s", a.status, ct, a.body)
	}
	var e struct {
		Error *struct {
			Message string `json:"message"`
			Type    string `json:"type"`
			Code    string `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(a.body), &e); err != nil || e.Error == nil || e.Error.Message == "" || e.Error.Type == "" || e.Error.Code == "" {
		t.Fatalf("status %d body is not an OpenAI error (%v): %.200s", a.status, err, a.body)
	}
	return e.Error.Code
}

func TestEveryGatewayErrorIsAnOpenAIStyleJSONError(t *testing.T) {
	f := startFleet(t, fleetOptions{wasm: true, stableW: 100})
	huge := strings.Repeat("h", 60<<10)
	cases := []struct {
		name   string
		req    request
		status int
		code   string // "" when Envoy names it
	}{
		{"unknown model", request{body: `{"model":"gpt-9","messages":[]}`}, 404, "model_not_found"},
		{"malformed body", request{body: `{"model":`}, 400, "invalid_request_body"},
		{"GET on chat completions", request{method: "GET", body: " "}, 405, "method_not_allowed"},
		{"DELETE on chat completions", request{method: "DELETE", body: " "}, 405, "method_not_allowed"},
		{"PUT on completions", request{method: "PUT", path: "/v1/completions"}, 405, "method_not_allowed"},
		{"POST on the model list", request{path: "/v1/models"}, 405, "method_not_allowed"},
		{"a 60 KB header", request{headers: map[string]string{"x-big": huge}}, 431, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := f.do(t, c.req)
			if a.status != c.status {
				t.Fatalf("status %d, want %d: %.200s", a.status, c.status, a.body)
			}
			code := openAIError(t, a)
			if c.code != "" && code != c.code {
				t.Fatalf("error code %q, want %q", code, c.code)
			}
			if c.status == 405 {
				want := "POST"
				if c.req.path == "/v1/models" {
					want = "GET"
				}
				if got := a.header.Get("allow"); got != want {
					t.Fatalf("405 with allow %q, want %q", got, want)
				}
			}
			if a.servedBy != "" {
				t.Fatalf("a pool (%s) saw a request the gateway should have answered", a.servedBy)
			}
		})
	}
}

func TestForcedUnknownVersionIsRefusedNotServedByStable(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "force-keys")
	if err := os.WriteFile(keys, []byte("operator-key-A\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := startFleet(t, fleetOptions{stableW: 100, stack: withWasm(t, keys)})
	a := f.do(t, request{headers: with(user(1), wire.HeaderForce, "v-nope", wire.HeaderKey, "operator-key-A")})
	if a.status != 404 || a.servedBy != "" {
		t.Fatalf("forcing an unknown version: %d served by %q, want a 404 from the gateway: %.200s", a.status, a.servedBy, a.body)
	}
	if code := openAIError(t, a); code != "version_not_found" {
		t.Fatalf("error code %q, want version_not_found", code)
	}
	// A known version is still served, and without the key nothing is
	// forced at all.
	if a := f.do(t, request{headers: with(user(1), wire.HeaderForce, "v2", wire.HeaderKey, "operator-key-A")}); a.status != 200 || a.servedBy != "v2" {
		t.Fatalf("forcing v2: %d served by %q", a.status, a.servedBy)
	}
	if a := f.do(t, request{headers: with(user(1), wire.HeaderForce, "v-nope")}); a.status != 200 || a.servedBy != "v1" {
		t.Fatalf("an unverified force of an unknown version: %d served by %q, want stable", a.status, a.servedBy)
	}
}
