//go:build integration

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

// Requests the gateway answers itself never reached a version: they must
// not become telemetry rows, where they would count as that version's
// failures (a models listing stored as failure "truncated" with no model).
func TestRequestsTheGatewayAnswersLeaveNoTelemetryRow(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "force-keys")
	if err := os.WriteFile(keys, []byte("operator-key-A\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	so := withWasm(t, keys)
	so.Telemetry = true
	f := startFleet(t, fleetOptions{stableW: 50, stack: so})
	gatewayAnswers := []request{
		{method: "GET", path: "/v1/models"},
		{method: "GET", body: " "},
		{body: `{"model":"gpt-9","messages":[]}`},
		{body: `{"model":`},
		{body: `{"model":"` + model + `","messages":[{"role":"user","content":"` + strings.Repeat("x", 1100<<10) + `"}]}`},
		{headers: with(user(1), wire.HeaderForce, "v-nope", wire.HeaderKey, "operator-key-A")},
	}
	for i, r := range gatewayAnswers {
		if a := f.do(t, r); a.status < 200 || a.servedBy != "" {
			t.Fatalf("gateway answer %d: %d served by %q", i, a.status, a.servedBy)
		}
	}
	// One request that reaches a pool marks when the rows above would have
	// been written: ext_proc records each stream when it ends, in order.
	served := f.do(t, request{headers: user(2)})
	if served.status != 200 {
		t.Fatalf("served request: %d %s", served.status, served.body)
	}
	if n := f.rowsWithRequestID(t, served.header.Get(wire.HeaderRequestID), 15*time.Second); n != 1 {
		t.Fatalf("the served request has %d rows, want 1", n)
	}
	conn, err := f.ClickHouse.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var total, unserved uint64
	row := conn.QueryRow(context.Background(), fmt.Sprintf(
		"SELECT count(), countIf(version = '' OR model = '' OR path = '') FROM %s.%s", wire.Database, wire.TableRequests))
	if err := row.Scan(&total, &unserved); err != nil {
		t.Fatal(err)
	}
	if total != 1 || unserved != 0 {
		t.Fatalf("%d rows (%d without a model, version or path) after %d gateway answers and 1 served request; want only the served one",
			total, unserved, len(gatewayAnswers))
	}
}
