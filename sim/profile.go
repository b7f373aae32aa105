package sim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"

	"sigs.k8s.io/yaml"
)

// DefaultModel is the served model name when a profile names none.
const DefaultModel = "llama-3-8b"

// JudgeModel is the served model name that turns a profile into a judge even
// without `judge: true`.
const JudgeModel = "llmcanary-judge"

// Defaults applied by New to fields left zero.
const (
	DefaultPromptTokensPerChar = 0.25
	DefaultRetryAfterSeconds   = 1
	defaultOutputTokens        = 32
)

// Profile describes one simulated model version: what it is called, how fast
// it streams, how long it answers and how often it misbehaves. YAML and JSON
// use the field names in the tags.
//
// The outcome rates are fractions of all requests and mutually exclusive: a
// request is an error, a rate limit, an abort, a refusal, a bad answer or a
// good answer, so their sum must not exceed 1.
type Profile struct {
	// Version names the version this pool serves; it is announced in the
	// x-sim-served-by header. Required.
	Version string `json:"version"`
	// Model is the served model name requests must ask for (default
	// DefaultModel, or JudgeModel when Judge is set).
	Model string `json:"model,omitempty"`
	// Seed makes every request's plan reproducible.
	Seed uint64 `json:"seed,omitempty"`
	// TTFT is the time from receiving a request to its first token. Unset
	// means zero.
	TTFT Dist `json:"ttft"`
	// ITL is the time between consecutive tokens. Unset means zero.
	ITL Dist `json:"itl"`
	// OutputTokens is how many tokens an answer has before the request's
	// max_tokens cap (default 32).
	OutputTokens Count `json:"output_tokens"`

	ErrorRate     float64 `json:"error_rate,omitempty"`
	RateLimitRate float64 `json:"rate_limit_rate,omitempty"`
	// RetryAfterSeconds is the retry-after of a 429 (default 1).
	RetryAfterSeconds int     `json:"retry_after_s,omitempty"`
	AbortRate         float64 `json:"abort_rate,omitempty"`
	RefusalRate       float64 `json:"refusal_rate,omitempty"`
	// BadAnswerRate is the fraction of answers that contain BadAnswerMarker.
	BadAnswerRate float64 `json:"bad_answer_rate,omitempty"`

	// PromptTokensPerChar turns the characters of a prompt into
	// usage.prompt_tokens (default 0.25, about four characters per token).
	PromptTokensPerChar float64 `json:"prompt_tokens_per_char,omitempty"`

	// Judge makes the server grade answers instead of writing them: see
	// JudgeScore.
	Judge bool `json:"judge,omitempty"`
}

// Dist is a latency distribution in milliseconds. Exactly one form is set:
// fixed (fixed_ms), uniform (min_ms, max_ms) or lognormal given its median
// and 99th percentile (median_ms, p99_ms). The zero Dist is fixed at zero. In
// YAML a plain number is shorthand for fixed_ms.
type Dist struct {
	FixedMS  *float64 `json:"fixed_ms,omitempty"`
	MinMS    *float64 `json:"min_ms,omitempty"`
	MaxMS    *float64 `json:"max_ms,omitempty"`
	MedianMS *float64 `json:"median_ms,omitempty"`
	P99MS    *float64 `json:"p99_ms,omitempty"`
}

// Fixed returns a Dist that is always ms milliseconds.
func Fixed(ms float64) Dist { return Dist{FixedMS: &ms} }

// Uniform returns a Dist uniform on [minMS, maxMS].
func Uniform(minMS, maxMS float64) Dist { return Dist{MinMS: &minMS, MaxMS: &maxMS} }

// LogNormalMedianP99 returns a lognormal Dist with the given median and 99th
// percentile.
func LogNormalMedianP99(medianMS, p99MS float64) Dist {
	return Dist{MedianMS: &medianMS, P99MS: &p99MS}
}

type distAlias Dist

// UnmarshalJSON accepts a number (fixed_ms) or an object.
func (d *Dist) UnmarshalJSON(b []byte) error {
	if t := bytes.TrimSpace(b); len(t) > 0 && (t[0] == '-' || (t[0] >= '0' && t[0] <= '9')) {
		var ms float64
		if err := json.Unmarshal(t, &ms); err != nil {
			return err
		}
		*d = Fixed(ms)
		return nil
	}
	return decodeStrict(b, (*distAlias)(d))
}

// z99 is the standard normal quantile at 0.99.
const z99 = 2.3263478740408408

func (d Dist) validate(name string) error {
	var errs []error
	forms := 0
	if d.FixedMS != nil {
		forms++
		if !(*d.FixedMS >= 0) {
			errs = append(errs, fmt.Errorf("%s.fixed_ms must be >= 0", name))
		}
	}
	if d.MinMS != nil || d.MaxMS != nil {
		forms++
		switch {
		case d.MinMS == nil || d.MaxMS == nil:
			errs = append(errs, fmt.Errorf("%s: min_ms and max_ms go together", name))
		case !(*d.MinMS >= 0) || !(*d.MaxMS >= *d.MinMS):
			errs = append(errs, fmt.Errorf("%s: need 0 <= min_ms <= max_ms", name))
		}
	}
	if d.MedianMS != nil || d.P99MS != nil {
		forms++
		switch {
		case d.MedianMS == nil || d.P99MS == nil:
			errs = append(errs, fmt.Errorf("%s: median_ms and p99_ms go together", name))
		case !(*d.MedianMS > 0) || !(*d.P99MS >= *d.MedianMS) || math.IsInf(*d.P99MS, 0):
			errs = append(errs, fmt.Errorf("%s: need 0 < median_ms <= p99_ms", name))
		}
	}
	if forms > 1 {
		errs = append(errs, fmt.Errorf("%s: set one of fixed_ms, min_ms/max_ms, median_ms/p99_ms", name))
	}
	return errors.Join(errs...)
}

// sampleMS draws one value in milliseconds; u is uniform on [0,1) and n
// standard normal, so the caller controls the order of random draws.
func (d Dist) sampleMS(u, n float64) float64 {
	switch {
	case d.FixedMS != nil:
		return *d.FixedMS
	case d.MinMS != nil:
		return *d.MinMS + u*(*d.MaxMS-*d.MinMS)
	case d.MedianMS != nil:
		mu := math.Log(*d.MedianMS)
		sigma := (math.Log(*d.P99MS) - mu) / z99
		return math.Exp(mu + sigma*n)
	}
	return 0
}

// Count is a token-count distribution: fixed, or uniform on [min, max]. The
// zero Count means the default (32). In YAML a plain number is shorthand for
// fixed.
type Count struct {
	Fixed *int `json:"fixed,omitempty"`
	Min   *int `json:"min,omitempty"`
	Max   *int `json:"max,omitempty"`
}

// FixedCount returns a Count that is always n.
func FixedCount(n int) Count { return Count{Fixed: &n} }

// UniformCount returns a Count uniform on [lo, hi].
func UniformCount(lo, hi int) Count { return Count{Min: &lo, Max: &hi} }

type countAlias Count

// UnmarshalJSON accepts a number (fixed) or an object.
func (c *Count) UnmarshalJSON(b []byte) error {
	if t := bytes.TrimSpace(b); len(t) > 0 && (t[0] == '-' || (t[0] >= '0' && t[0] <= '9')) {
		var n int
		if err := json.Unmarshal(t, &n); err != nil {
			return err
		}
		*c = FixedCount(n)
		return nil
	}
	return decodeStrict(b, (*countAlias)(c))
}

func (c Count) validate(name string) error {
	var errs []error
	if c.Fixed != nil {
		if *c.Fixed < 1 {
			errs = append(errs, fmt.Errorf("%s.fixed must be >= 1", name))
		}
		if c.Min != nil || c.Max != nil {
			errs = append(errs, fmt.Errorf("%s: set fixed or min/max, not both", name))
		}
	}
	if c.Min != nil || c.Max != nil {
		switch {
		case c.Min == nil || c.Max == nil:
			errs = append(errs, fmt.Errorf("%s: min and max go together", name))
		case *c.Min < 1 || *c.Max < *c.Min:
			errs = append(errs, fmt.Errorf("%s: need 1 <= min <= max", name))
		}
	}
	return errors.Join(errs...)
}

// sample draws a count; u is uniform on [0,1).
func (c Count) sample(u float64) int {
	switch {
	case c.Fixed != nil:
		return *c.Fixed
	case c.Min != nil:
		return *c.Min + int(u*float64(*c.Max-*c.Min+1))
	}
	return defaultOutputTokens
}

// Validate reports every problem of the profile at once.
func (p Profile) Validate() error {
	var errs []error
	if p.Version == "" {
		errs = append(errs, errors.New("version is required"))
	}
	errs = append(errs, p.TTFT.validate("ttft"), p.ITL.validate("itl"), p.OutputTokens.validate("output_tokens"))
	sum := 0.0
	for _, r := range []struct {
		name string
		v    float64
	}{
		{"error_rate", p.ErrorRate},
		{"rate_limit_rate", p.RateLimitRate},
		{"abort_rate", p.AbortRate},
		{"refusal_rate", p.RefusalRate},
		{"bad_answer_rate", p.BadAnswerRate},
	} {
		if !(r.v >= 0 && r.v <= 1) {
			errs = append(errs, fmt.Errorf("%s must be in [0,1], got %v", r.name, r.v))
			continue
		}
		sum += r.v
	}
	if sum > 1+1e-9 {
		errs = append(errs, fmt.Errorf("outcome rates are exclusive and sum to %v > 1", sum))
	}
	if p.RetryAfterSeconds < 0 {
		errs = append(errs, errors.New("retry_after_s must be >= 0"))
	}
	if !(p.PromptTokensPerChar >= 0) || math.IsInf(p.PromptTokensPerChar, 0) {
		errs = append(errs, errors.New("prompt_tokens_per_char must be >= 0"))
	}
	return errors.Join(errs...)
}

// withDefaults fills the zero fields New documents.
func (p Profile) withDefaults() Profile {
	if p.Model == "" {
		p.Model = DefaultModel
		if p.Judge {
			p.Model = JudgeModel
		}
	}
	if p.Model == JudgeModel {
		p.Judge = true
	}
	if p.PromptTokensPerChar == 0 {
		p.PromptTokensPerChar = DefaultPromptTokensPerChar
	}
	if p.RetryAfterSeconds == 0 {
		p.RetryAfterSeconds = DefaultRetryAfterSeconds
	}
	return p
}

// ParseProfile reads a profile from YAML (or JSON), rejecting unknown fields.
// It does not validate.
func ParseProfile(b []byte) (Profile, error) {
	var p Profile
	if err := yaml.UnmarshalStrict(b, &p); err != nil {
		return Profile{}, fmt.Errorf("parse profile: %w", err)
	}
	return p, nil
}

// LoadProfile reads a profile file. It does not validate.
func LoadProfile(path string) (Profile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Profile{}, fmt.Errorf("load profile: %w", err)
	}
	p, err := ParseProfile(b)
	if err != nil {
		return Profile{}, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// decodeStrict decodes JSON rejecting unknown fields, so a misspelt
// distribution key is an error rather than a silent zero.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}
