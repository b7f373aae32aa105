//go:build integration

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/wasm/filter"
)

// rowsWithRequestID counts the telemetry rows keyed by id, waiting up to
// within for the first one (rows are written when a stream ends, in batches).
func (f *fleet) rowsWithRequestID(t *testing.T, id string, within time.Duration) uint64 {
	t.Helper()
	conn, err := f.ClickHouse.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	deadline := time.Now().Add(within)
	for {
		var n uint64
		row := conn.QueryRow(context.Background(), fmt.Sprintf(
			"SELECT count() FROM %s.%s WHERE request_id = ?", wire.Database, wire.TableRequests), id)
		if err := row.Scan(&n); err != nil {
			t.Fatalf("count rows of %s: %v", id, err)
		}
		if n > 0 || time.Now().After(deadline) {
			return n
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Feedback (POST /v1/feedback) is keyed by request id: a client can give it
// only if every response tells it the id its telemetry row has.
func TestEveryResponseCarriesTheRequestIDItsTelemetryRowHas(t *testing.T) {
	f := telemetryFleet(t, analyzerProfile("v1", 0), analyzerProfile("v2", 0))
	cases := []struct {
		name   string
		sent   string // the client's x-request-id, "" for none
		keeps  bool
		stream bool
	}{
		{"without a client id the gateway's own comes back", "", false, false},
		{"streamed responses carry it too", "", false, true},
		{"a well-formed client id is kept", "client-4b1f9c2e-0001", true, false},
		{"an ill-formed client id is replaced", "not a valid <id>", false, false},
		{"an overlong client id is replaced", strings.Repeat("x", filter.MaxRequestIDLen+1), false, false},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := request{headers: user(i)}
			if c.sent != "" {
				r.headers = with(r.headers, wire.HeaderRequestID, c.sent)
			}
			if c.stream {
				r.body = streamBody
			}
			a := f.do(t, r)
			got := a.header.Get(wire.HeaderRequestID)
			if a.status != 200 || got == "" {
				t.Fatalf("status %d with request id %q, want 200 with an id", a.status, got)
			}
			if c.keeps && got != c.sent {
				t.Fatalf("the client's id %q came back as %q", c.sent, got)
			}
			if !c.keeps && (got == c.sent || !filter.WellFormedRequestID(got)) {
				t.Fatalf("sent %q, got %q: want a fresh well-formed id", c.sent, got)
			}
			if n := f.rowsWithRequestID(t, got, 15*time.Second); n != 1 {
				t.Fatalf("%d telemetry rows have request id %q, want 1", n, got)
			}
		})
	}
}
