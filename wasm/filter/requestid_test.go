package filter

import (
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
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

// newRequestIDAsBefore is newRequestID as written with encoding/binary and
// encoding/hex, before the module dropped them.
func newRequestIDAsBefore(random func() uint64) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], random())
	binary.BigEndian.PutUint64(b[8:], random())
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func TestNewRequestIDIsAVersion4UUIDOfItsRandomBits(t *testing.T) {
	for seed := uint64(0); seed < 1000; seed++ {
		r1, r2 := rand.New(rand.NewPCG(seed, 7)), rand.New(rand.NewPCG(seed, 7))
		if got, want := newRequestID(r1.Uint64), newRequestIDAsBefore(r2.Uint64); got != want {
			t.Fatalf("seed %d: %s, want %s", seed, got, want)
		}
	}
	for _, x := range []uint64{0, ^uint64(0)} {
		id := newRequestID(func() uint64 { return x })
		if len(id) != 36 || id[14] != '4' || !strings.ContainsRune("89ab", rune(id[19])) {
			t.Errorf("from %x: %s is not a version 4 UUID", x, id)
		}
	}
}
