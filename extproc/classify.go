package extproc

import (
	"bytes"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// End says how the ext_proc stream of one request ended.
type End int

const (
	// EndComplete: Envoy delivered the response's end of stream.
	EndComplete End = iota
	// EndUpstreamReset: the response had started (headers seen) and the
	// stream went away before its end. Seen from ext_proc an upstream reset
	// and a client hanging up mid-response look alike; the Server asks
	// Envoy's access log (ResetCauses) which it was, and counts it as
	// upstream_reset when the log does not say, so harm done by a version
	// is never hidden under client behaviour.
	EndUpstreamReset
	// EndClientCancel: the stream went away before any response headers.
	// An upstream failure before headers reaches ext_proc as Envoy's local
	// 5xx reply, so a missing response means the client left first.
	EndClientCancel
	// EndShutdown: the service cut the stream itself, because its drain
	// bound passed during a shutdown (Server.Drain). Neither the client nor
	// the version ended it and its end was not seen, so it is classified
	// like a client that left — client_cancel, the kind no version is
	// blamed for — unless its status already shows a failure.
	EndShutdown
)

// Outcome is what the finaliser knows when a request's stream ends.
type Outcome struct {
	Status           int // HTTP status; 0 when no response headers came
	End              End
	Streamed         bool   // text/event-stream response
	SawDone          bool   // "data: [DONE]" arrived
	FinishReason     string // from the last choice that carried one
	CompletionTokens uint32
}

// Classify returns the failure kind of a finished request, "" when it
// completed normally. Status classes come first: a 5xx is a 5xx whether or
// not the client stayed.
func Classify(o Outcome) string {
	switch {
	case o.Status >= 500:
		return FailureHTTP5xx
	case o.Status == 429:
		return FailureHTTP429
	case o.Status >= 400:
		return FailureHTTP4xx
	}
	switch o.End {
	case EndClientCancel, EndShutdown:
		return FailureClientCancel
	case EndUpstreamReset:
		return FailureUpstreamReset
	}
	if o.Status == 0 {
		// A stream that "completed" without response headers: Envoy gave
		// up on the upstream without a reply.
		return FailureUpstreamReset
	}
	if !o.SawDone && o.FinishReason == "" {
		return FailureTruncated
	}
	if o.CompletionTokens == 0 {
		return FailureEmpty
	}
	return ""
}

// DefaultRefusalPatterns are the case-insensitive regular expressions that
// mark a completion as a refusal unless configured otherwise. They match
// the stock phrasings of instruction-tuned models; "['’]" accepts both
// straight and typographic apostrophes.
var DefaultRefusalPatterns = []string{
	`\bI['’]m sorry,? but I (can['’]t|cannot|won['’]t|am unable to)\b`,
	`\bI (cannot|can['’]t) (help|assist) with\b`,
	`\bI['’]m (not able|unable) to (help|assist|provide|comply)\b`,
	`\bAs an AI\b`,
	`\bI must (decline|refuse)\b`,
}

// RefusalWindow is how much of a completion's beginning is searched for a
// refusal: models refuse up front, and a bounded window keeps the cost per
// request fixed.
const RefusalWindow = 2048

// defaultRefusalKeys are words of which every match of
// DefaultRefusalPatterns contains at least one, in ASCII lower case:
// "orry" (sorry), "help with", "ist with" (assist with), "able to" (not
// able to, unable to), "an ai" (As an AI), "i mu" (I must). They avoid
// the letters k and s, whose case-insensitive matches include the
// non-ASCII K (Kelvin sign) and ſ (long s), so a byte-wise lower-casing
// search finds them wherever a pattern could match. A text without any of
// them is no refusal and the regular expression never runs on it — which
// is almost every completion.
var defaultRefusalKeys = []string{"orry", "help with", "ist with", "able to", "an ai", "i mu"}

// RefusalDetector tells refusals by regular expressions on the completion
// text. Safe for concurrent use.
type RefusalDetector struct {
	re *regexp.Regexp
	// keys, when set, are words without one of which the text cannot
	// match re (see defaultRefusalKeys).
	keys []string
}

// NewRefusalDetector compiles patterns (case-insensitive, any one matches).
// No patterns means no refusal is ever reported.
func NewRefusalDetector(patterns []string) (*RefusalDetector, error) {
	if len(patterns) == 0 {
		return &RefusalDetector{}, nil
	}
	parts := make([]string, len(patterns))
	for i, p := range patterns {
		if _, err := regexp.Compile(p); err != nil {
			return nil, fmt.Errorf("refusal pattern %q: %w", p, err)
		}
		parts[i] = "(?:" + p + ")"
	}
	re, err := regexp.Compile("(?i)" + strings.Join(parts, "|"))
	if err != nil {
		return nil, fmt.Errorf("refusal patterns: %w", err)
	}
	d := &RefusalDetector{re: re}
	if slices.Equal(patterns, DefaultRefusalPatterns) {
		d.keys = defaultRefusalKeys
	}
	return d, nil
}

// Refusal reports whether text (its first RefusalWindow bytes) is a refusal.
func (d *RefusalDetector) Refusal(text string) bool {
	if d == nil || d.re == nil {
		return false
	}
	if len(text) > RefusalWindow {
		text = text[:RefusalWindow]
	}
	if d.keys != nil && !containsAnyFolded(text, d.keys) {
		return false
	}
	return d.re.MatchString(text)
}

// containsAnyFolded reports whether text, its ASCII letters lower-cased,
// contains one of keys (lower-case ASCII).
func containsAnyFolded(text string, keys []string) bool {
	var buf [RefusalWindow]byte
	low := buf[:0]
	for i := 0; i < len(text); i++ {
		c := text[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		low = append(low, c)
	}
	for _, k := range keys {
		if bytes.Contains(low, []byte(k)) {
			return true
		}
	}
	return false
}

// Prices are a version's list prices in USD per 1000 tokens, from its
// cluster metadata.
type Prices struct {
	InputPer1K  float64
	OutputPer1K float64
}

// Cost is the price of one request: prompt/1000 × input + completion/1000 × output.
func Cost(promptTokens, completionTokens uint32, p Prices) float64 {
	return float64(promptTokens)/1000*p.InputPer1K + float64(completionTokens)/1000*p.OutputPer1K
}
