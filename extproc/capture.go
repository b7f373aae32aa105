package extproc

import (
	"errors"
	"math/rand/v2"
	"regexp"
	"unicode/utf8"
)

// CaptureOptions configure sampled capture of prompt and completion text.
// Capture is off unless Rate > 0.
type CaptureOptions struct {
	// Rate is the fraction of requests whose text is kept, in [0, 1].
	Rate float64
	// MaxBytes caps each of prompt and completion (after redaction).
	MaxBytes int
	// Redact rewrites captured text before it leaves the service. Nil
	// means DefaultRedact.
	Redact func(string) string
}

// DefaultCaptureMaxBytes is the size cap when MaxBytes is zero.
const DefaultCaptureMaxBytes = 16 << 10

// Enabled reports whether any request may be captured.
func (c CaptureOptions) Enabled() bool { return c.Rate > 0 }

// Validate checks the rate and the size cap.
func (c CaptureOptions) Validate() error {
	var errs []error
	if c.Rate < 0 || c.Rate > 1 {
		errs = append(errs, errors.New("capture rate must be within [0, 1]"))
	}
	if c.MaxBytes < 0 {
		errs = append(errs, errors.New("capture size cap must not be negative"))
	}
	return errors.Join(errs...)
}

func (c CaptureOptions) withDefaults() CaptureOptions {
	if c.MaxBytes == 0 {
		c.MaxBytes = DefaultCaptureMaxBytes
	}
	if c.Redact == nil {
		c.Redact = DefaultRedact
	}
	return c
}

// sample decides, per request, whether to capture.
func (c CaptureOptions) sample() bool {
	return c.Rate > 0 && (c.Rate >= 1 || rand.Float64() < c.Rate)
}

// prepare redacts and then caps s on a rune boundary.
func (c CaptureOptions) prepare(s string) string {
	s = c.Redact(s)
	return truncateUTF8(s, c.MaxBytes)
}

var (
	emailRE = regexp.MustCompile(`[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}`)
	// Long digit runs: card, account and phone numbers, possibly grouped by
	// spaces or dashes. Eight digits or more.
	digitsRE = regexp.MustCompile(`\d(?:[ \-]?\d){7,}`)
)

// DefaultRedact replaces e-mail addresses with "[email]" and runs of eight
// or more digits (spaces and dashes allowed between them) with "[number]".
func DefaultRedact(s string) string {
	s = emailRE.ReplaceAllString(s, "[email]")
	return digitsRE.ReplaceAllString(s, "[number]")
}

// truncateUTF8 cuts s to at most n bytes without splitting a rune.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
