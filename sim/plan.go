package sim

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"time"
)

// Outcome is what a request is planned to get.
type Outcome string

// Outcomes, announced in the x-sim-outcome header.
const (
	OutcomeOK        Outcome = "ok"        // a good answer
	OutcomeRefusal   Outcome = "refusal"   // RefusalText, finish_reason "stop"
	OutcomeBad       Outcome = "bad"       // an answer containing BadAnswerMarker
	OutcomeAbort     Outcome = "abort"     // the connection is cut mid-answer
	OutcomeError     Outcome = "error"     // HTTP 500
	OutcomeRateLimit Outcome = "ratelimit" // HTTP 429 with retry-after
)

// Finish reasons, as in the OpenAI API.
const (
	FinishStop   = "stop"
	FinishLength = "length"
)

// Plan is everything random about one request, decided before the first
// byte is written. It is a pure function of the profile, the request key and
// the request's limits (see MakePlan).
type Plan struct {
	Outcome Outcome
	// ID is the response id's random part (hex).
	ID string
	// TTFT is the delay from receiving the request to the first token.
	TTFT time.Duration
	// ITL holds the gaps between consecutive tokens: ITL[i] separates token
	// i from token i+1, so len(ITL) == CompletionTokens-1 (or 0).
	ITL []time.Duration
	// CompletionTokens is the length of the full answer.
	CompletionTokens int
	PromptTokens     int
	// FinishReason is "stop" or "length" ("" for errors and rate limits).
	FinishReason string
	// AbortAfter is, for OutcomeAbort, how many tokens are sent before the
	// connection is cut (less than CompletionTokens, so the final chunk
	// and [DONE] never arrive).
	AbortAfter int
	// BadAt is, for OutcomeBad, the index of the marker's first token.
	BadAt int
	// textSeed picks the words of the answer.
	textSeed uint64
}

// DeliveredTokens is how many token chunks the client receives.
func (p Plan) DeliveredTokens() int {
	switch p.Outcome {
	case OutcomeAbort:
		return p.AbortAfter
	case OutcomeError, OutcomeRateLimit:
		return 0
	}
	return p.CompletionTokens
}

// MeanITL is the mean planned gap between the delivered tokens (0 with
// fewer than two).
func (p Plan) MeanITL() time.Duration {
	n := p.DeliveredTokens() - 1
	if n <= 0 {
		return 0
	}
	var sum time.Duration
	for _, d := range p.ITL[:n] {
		sum += d
	}
	return sum / time.Duration(n)
}

// TokenAt is the planned delay from receiving the request to token i.
func (p Plan) TokenAt(i int) time.Duration {
	t := p.TTFT
	for _, d := range p.ITL[:i] {
		t += d
	}
	return t
}

// Token is the text of token i (0-based): deterministic words, with the
// refusal or the bad-answer marker laid over them where planned.
func (p Plan) Token(i int) string {
	switch {
	case p.Outcome == OutcomeRefusal && i < len(refusalTokens):
		return refusalTokens[i]
	case p.Outcome == OutcomeBad && i >= p.BadAt && i < p.BadAt+len(markerTokens):
		return markerTokens[i-p.BadAt]
	}
	return word(p.textSeed, i)
}

// Text is the concatenation of the first n tokens.
func (p Plan) Text(n int) string {
	var b []byte
	for i := range n {
		b = append(b, p.Token(i)...)
	}
	return string(b)
}

// MakePlan decides one request. p must be valid and have its defaults
// applied (New does both). key identifies the request (its x-request-id, or
// its body); maxTokens caps the answer (0 means no cap). The result depends
// only on the arguments: same seed and key, same plan, whatever runs
// concurrently.
func MakePlan(p Profile, key []byte, maxTokens, promptTokens int) Plan {
	h := sha256.New()
	var seed [8]byte
	binary.LittleEndian.PutUint64(seed[:], p.Seed)
	h.Write(seed[:])
	h.Write(key)
	sum := h.Sum(nil)
	rng := rand.New(rand.NewPCG(binary.LittleEndian.Uint64(sum[0:8]), binary.LittleEndian.Uint64(sum[8:16])))

	// A fixed number of draws first, in a fixed order, so that changing one
	// distribution does not reshuffle the others.
	uOutcome := rng.Float64()
	uTTFT, nTTFT := rng.Float64(), rng.NormFloat64()
	uTokens := rng.Float64()
	uAbort := rng.Float64()
	uBad := rng.Float64()
	plan := Plan{
		ID:           hex.EncodeToString(sum[16:32]),
		PromptTokens: promptTokens,
		textSeed:     rng.Uint64(),
	}

	plan.Outcome = OutcomeOK
	cum := 0.0
	for _, o := range []struct {
		rate float64
		out  Outcome
	}{
		{p.ErrorRate, OutcomeError},
		{p.RateLimitRate, OutcomeRateLimit},
		{p.AbortRate, OutcomeAbort},
		{p.RefusalRate, OutcomeRefusal},
		{p.BadAnswerRate, OutcomeBad},
	} {
		cum += o.rate
		if uOutcome < cum {
			plan.Outcome = o.out
			break
		}
	}
	if plan.Outcome == OutcomeError || plan.Outcome == OutcomeRateLimit {
		return plan
	}

	plan.TTFT = msToDuration(p.TTFT.sampleMS(uTTFT, nTTFT))
	n := p.OutputTokens.sample(uTokens)
	switch plan.Outcome {
	case OutcomeRefusal:
		n = len(refusalTokens)
	case OutcomeBad:
		n = max(n, len(markerTokens))
	case OutcomeAbort:
		n = max(n, 2) // room to cut after at least one token
	}
	plan.FinishReason = FinishStop
	if maxTokens > 0 && n > maxTokens {
		n, plan.FinishReason = maxTokens, FinishLength
	}
	plan.CompletionTokens = n
	switch plan.Outcome {
	case OutcomeAbort:
		// Cut after 1..n-1 tokens; with a one-token cap, before any.
		if n >= 2 {
			plan.AbortAfter = 1 + int(uAbort*float64(n-1))
		}
	case OutcomeBad:
		// The marker fits whole unless max_tokens is shorter than it.
		if room := n - len(markerTokens); room > 0 {
			plan.BadAt = int(uBad * float64(room+1))
		}
	}
	if n > 1 {
		plan.ITL = make([]time.Duration, n-1)
		for i := range plan.ITL {
			plan.ITL[i] = msToDuration(p.ITL.sampleMS(rng.Float64(), rng.NormFloat64()))
		}
	}
	return plan
}

func msToDuration(ms float64) time.Duration {
	return time.Duration(ms * float64(time.Millisecond))
}
