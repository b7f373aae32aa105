// Package filterconfig is the configuration of llmcanary's proxy-wasm
// filter: the JSON the control plane puts in the Envoy config and the wasm
// module reads in proxy_on_configure. It builds natively and for wasip1, so
// both sides share one type and one validation.
package filterconfig

import (
	"errors"
	"strconv"

	"github.com/llmcanary/llmcanary/internal/wire"
)

// Defaults applied by WithDefaults.
const (
	DefaultMaxBodyBytes = 1 << 20
	// MinHashKeyBytes is the shortest accepted hash_key: a short secret
	// would let anyone compute which identities land in the canary.
	MinHashKeyBytes = 16
)

// Source is one identity source; exactly one field is set.
type Source struct {
	// Header names a request header whose value is the identity.
	Header string `json:"header,omitempty"`
	// Cookie names a cookie (from the Cookie header) whose value is the
	// identity.
	Cookie string `json:"cookie,omitempty"`
	// BodyField names a top-level string field of the JSON request body
	// (e.g. OpenAI's "user"); only read on the body-routed paths.
	BodyField string `json:"body_field,omitempty"`
}

// Config is the filter's plugin configuration.
type Config struct {
	// Identity lists the identity sources in order; the first present one
	// wins. Empty means DefaultIdentity.
	Identity []Source `json:"identity,omitempty"`
	// HashKey is the secret of the keyed hash that turns an identity into a
	// bucket. Every Envoy of a fleet must share it so that a user lands in
	// the same bucket everywhere.
	HashKey string `json:"hash_key"`
	// ForceKeys are the hex SHA-256 digests (ForceKeyDigest) of the keys
	// accepted in x-llmcanary-key. Several may be valid at once so that
	// keys rotate without downtime; the clear keys never enter Envoy.
	ForceKeys []string `json:"force_keys,omitempty"`
	// MaxBodyBytes caps the request body read to find the model; larger
	// requests get 413. Envoy's per-connection buffer limit must be at least
	// this large. Zero means DefaultMaxBodyBytes.
	MaxBodyBytes int `json:"max_body_bytes,omitempty"`
	// Models are the model names served; a body naming another gets 404.
	Models []string `json:"models"`
	// CategoryHeader is the request header whose value becomes
	// x-llmcanary-category, which routes a request to the version a model's
	// category_overrides name. Empty means x-llmcanary-category itself.
	CategoryHeader string `json:"category_header,omitempty"`
	// CategoryHeaderTrusted says that the operator runs a hop in front of
	// Envoy (an auth proxy, an API gateway) that sets CategoryHeader itself
	// and never passes on a client's own. Only then is the header read.
	// Off (the default), every client's x-llmcanary-category is dropped:
	// a client must not pick its version by naming a category.
	CategoryHeaderTrusted bool `json:"category_header_trusted,omitempty"`
	// Cohorts are the models' opt-in and excluded users. The filter marks
	// a member's request with wire.HeaderAssigned, which a route of the
	// model's matches to send it to the canary or to stable.
	Cohorts []ModelCohorts `json:"cohorts,omitempty"`
	// CohortHeader is the request header whose value names a request's
	// cohort (matched against Members.Cohorts). Empty means
	// x-llmcanary-cohort.
	CohortHeader string `json:"cohort_header,omitempty"`
	// CohortHeaderTrusted says that a hop in front of Envoy sets
	// CohortHeader itself and never passes on a client's own. Only then,
	// or with a valid x-llmcanary-key, is the header read; otherwise it is
	// removed: a client must not opt itself into a canary by naming a
	// cohort.
	CohortHeaderTrusted bool `json:"cohort_header_trusted,omitempty"`
	// TenantHeader is the request header whose value is the tenant
	// (matched against Members.Tenants). Required when a model lists
	// tenants.
	TenantHeader string `json:"tenant_header,omitempty"`
}

// DefaultIdentity returns the identity sources used when none are
// configured: the x-user-id header, then the body's "user" field, which is
// how OpenAI clients name their end user. A client that only sets "user"
// must still be sticky: otherwise each of its requests draws a random
// bucket and one user sees both versions.
func DefaultIdentity() []Source {
	return []Source{{Header: wire.HeaderUserID}, {BodyField: wire.BodyFieldUser}}
}

// WithDefaults returns c with the documented defaults filled in.
func (c Config) WithDefaults() Config {
	if len(c.Identity) == 0 {
		c.Identity = DefaultIdentity()
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.CategoryHeader == "" {
		c.CategoryHeader = wire.HeaderCategory
	}
	if c.CohortHeader == "" {
		c.CohortHeader = wire.HeaderCohort
	}
	return c
}

// Validate reports every problem of c, joined.
func (c Config) Validate() error {
	var errs []error
	bad := func(msg string) { errs = append(errs, errors.New(msg)) }
	for i, s := range c.Identity {
		n := 0
		for _, v := range []string{s.Header, s.Cookie, s.BodyField} {
			if v != "" {
				n++
			}
		}
		if n != 1 {
			bad("identity[" + strconv.Itoa(i) + "]: exactly one of header, cookie, body_field must be set")
		}
	}
	if len(c.HashKey) < MinHashKeyBytes {
		bad("hash_key: must be at least " + strconv.Itoa(MinHashKeyBytes) + " bytes, got " + strconv.Itoa(len(c.HashKey)))
	}
	for i, d := range c.ForceKeys {
		if _, ok := ParseDigest(d); !ok {
			bad("force_keys[" + strconv.Itoa(i) + "]: not a hex SHA-256 digest")
		}
	}
	if c.MaxBodyBytes < 0 {
		bad("max_body_bytes: must not be negative, got " + strconv.Itoa(c.MaxBodyBytes))
	}
	seen := map[string]bool{}
	for i, m := range c.Models {
		switch {
		case m == "":
			bad("models[" + strconv.Itoa(i) + "]: empty name")
		case seen[m]:
			bad("models[" + strconv.Itoa(i) + "]: duplicate " + strconv.Quote(m))
		}
		seen[m] = true
	}
	cohortsOf := map[string]bool{}
	for i, mc := range c.Cohorts {
		p := "cohorts[" + strconv.Itoa(i) + "]"
		switch {
		case !seen[mc.Model]:
			bad(p + ": model " + strconv.Quote(mc.Model) + " is not one of models")
		case cohortsOf[mc.Model]:
			bad(p + ": model " + strconv.Quote(mc.Model) + " given twice")
		}
		cohortsOf[mc.Model] = true
		if err := mc.Validate(); err != nil {
			bad(p + ": " + err.Error())
		}
		if c.TenantHeader == "" && (len(mc.OptIn.Tenants) > 0 || len(mc.Excluded.Tenants) > 0) {
			bad(p + ": lists tenants but tenant_header is not set")
		}
	}
	return errors.Join(errs...)
}

// Parse decodes a JSON configuration, applies the defaults and validates it.
// Unknown fields are errors, so a misspelt option is not silently ignored.
func Parse(data []byte) (Config, error) {
	var c Config
	if err := decodeStrict(data, &c); err != nil {
		return Config{}, errors.New("parse filter config: " + err.Error())
	}
	c = c.WithDefaults()
	if err := c.Validate(); err != nil {
		return Config{}, errors.New("invalid filter config: " + err.Error())
	}
	return c, nil
}

// DigestSize is the length of a SHA-256 digest in bytes.
const DigestSize = 32

// ParseDigest decodes a hex SHA-256 digest (64 hex digits, either case),
// the form of force_keys.
func ParseDigest(s string) ([DigestSize]byte, bool) {
	var d [DigestSize]byte
	if len(s) != 2*DigestSize {
		return d, false
	}
	for i := range d {
		hi, ok1 := unhex(s[2*i])
		lo, ok2 := unhex(s[2*i+1])
		if !ok1 || !ok2 {
			return d, false
		}
		d[i] = hi<<4 | lo
	}
	return d, true
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
