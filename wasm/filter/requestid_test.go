package filter

import (
	"regexp"
	"strings"
	"testing"

	"github.com/llmcanary/llmcanary/internal/wire"
)

func TestClientRequestIDIsKeptOnlyWhenWellFormed(t *testing.T) {
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	cases := []struct {
		name string
		id   string
		kept bool
	}{
		{"a UUID is kept", "3f0c2a9e-8b1d-4c55-9a4e-1b2c3d4e5f60", true},
		{"a prefixed id is kept", "req_01HZX3:retry.2", true},
		{"the longest accepted id is kept", strings.Repeat("a", MaxRequestIDLen), true},
		{"a longer id is replaced", strings.Repeat("a", MaxRequestIDLen+1), false},
		{"spaces are replaced", "my request", false},
		{"markup is replaced", "<script>", false},
		{"non-ASCII is replaced", "réq-1", false},
		{"an empty id is replaced", "", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := &fakeHost{headers: [][2]string{{":method", "GET"}, {":path", "/v1/models"}, {wire.HeaderRequestID, c.id}}}
			p := testPlugin(t)
			if act := p.NewStream(h).OnRequestHeaders(true); act != Continue {
				t.Fatalf("action %v", act)
			}
			got, _ := h.get(wire.HeaderRequestID)
			if c.kept && got != c.id {
				t.Fatalf("well-formed id %q became %q", c.id, got)
			}
			if !c.kept && (got == c.id || !uuid.MatchString(got)) {
				t.Fatalf("ill-formed id %q became %q, want a fresh UUID", c.id, got)
			}
		})
	}
}
