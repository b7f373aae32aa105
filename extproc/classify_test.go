package extproc

import (
	"errors"
	"math"
	"testing"
	"time"
)

func msd(v ...float64) []time.Duration {
	out := make([]time.Duration, len(v))
	for i, x := range v {
		out[i] = time.Duration(x * float64(time.Millisecond))
	}
	return out
}

func TestMeasureTokens(t *testing.T) {
	tests := []struct {
		name     string
		arrivals []time.Duration
		want     TokenTiming
		wantErr  error
	}{
		{"no tokens is its own outcome", nil, TokenTiming{}, ErrNoTokens},
		{"one token has TTFT and no gaps", msd(120), TokenTiming{TTFT: msd(120)[0]}, nil},
		{"steady stream", msd(100, 110, 120, 130, 140),
			TokenTiming{TTFT: msd(100)[0], ITLMean: msd(10)[0], ITLP50: msd(10)[0], ITLP95: msd(10)[0], ITLMax: msd(10)[0], Gaps: 4}, nil},
		{"one stall shows in max and p95, not p50", msd(50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150, 160, 170, 180, 190, 200, 210, 220, 230, 240, 740),
			TokenTiming{TTFT: msd(50)[0], ITLMean: msd(34.5)[0], ITLP50: msd(10)[0], ITLP95: msd(10)[0], ITLMax: msd(500)[0], Gaps: 20}, nil},
		{"tokens in the same chunk have zero gaps", msd(30, 30, 30, 60),
			TokenTiming{TTFT: msd(30)[0], ITLMean: msd(10)[0], ITLP50: 0, ITLP95: msd(30)[0], ITLMax: msd(30)[0], Gaps: 3}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := MeasureTokens(tt.arrivals)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Fatalf("MeasureTokens = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestClassify(t *testing.T) {
	ok := Outcome{Status: 200, Streamed: true, SawDone: true, FinishReason: "stop", CompletionTokens: 10}
	with := func(f func(*Outcome)) Outcome { o := ok; f(&o); return o }
	tests := []struct {
		name string
		in   Outcome
		want string
	}{
		{"complete stream is not a failure", ok, ""},
		{"finish reason without DONE is complete", with(func(o *Outcome) { o.SawDone = false }), ""},
		{"DONE without finish reason is complete", with(func(o *Outcome) { o.FinishReason = "" }), ""},
		{"500 is http_5xx", with(func(o *Outcome) { o.Status = 500 }), FailureHTTP5xx},
		{"503 local reply is http_5xx", Outcome{Status: 503}, FailureHTTP5xx},
		{"5xx wins over client cancel", with(func(o *Outcome) { o.Status = 502; o.End = EndClientCancel }), FailureHTTP5xx},
		{"429 is http_429", Outcome{Status: 429}, FailureHTTP429},
		{"404 is http_4xx", Outcome{Status: 404}, FailureHTTP4xx},
		{"400 is http_4xx", Outcome{Status: 400}, FailureHTTP4xx},
		{"stream cut after headers is upstream_reset", with(func(o *Outcome) { o.End = EndUpstreamReset; o.SawDone = false; o.FinishReason = "" }), FailureUpstreamReset},
		{"gone before any response is client_cancel", Outcome{End: EndClientCancel}, FailureClientCancel},
		{"cut by the service's shutdown mid-answer is client_cancel, not the version's failure", with(func(o *Outcome) { o.End = EndShutdown; o.SawDone = false; o.FinishReason = "" }), FailureClientCancel},
		{"5xx wins over a shutdown cut", with(func(o *Outcome) { o.Status = 503; o.End = EndShutdown }), FailureHTTP5xx},
		{"no response yet complete is upstream_reset", Outcome{}, FailureUpstreamReset},
		{"ended without DONE or finish reason is truncated", with(func(o *Outcome) { o.SawDone = false; o.FinishReason = "" }), FailureTruncated},
		{"2xx with no tokens is empty", with(func(o *Outcome) { o.CompletionTokens = 0 }), FailureEmpty},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Classify(tt.in); got != tt.want {
				t.Fatalf("Classify(%+v) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestRefusalDetector(t *testing.T) {
	d, err := NewRefusalDetector(DefaultRefusalPatterns)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		text string
		want bool
	}{
		{"I'm sorry, but I can't help with that request.", true},
		{"I’m sorry, but I cannot do that.", true},
		{"i cannot help with this", true},
		{"As an AI language model, I don't have opinions.", true},
		{"Sure! Here is the recipe you asked for.", false},
		{"I'm sorry to hear that. Here is what you can do.", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := d.Refusal(tt.text); got != tt.want {
			t.Errorf("Refusal(%q) = %v, want %v", tt.text, got, tt.want)
		}
	}
}

func TestRefusalDetectorConfiguredPatterns(t *testing.T) {
	d, err := NewRefusalDetector([]string{`^Nope\b`})
	if err != nil {
		t.Fatal(err)
	}
	if !d.Refusal("nope, not today") || d.Refusal("As an AI, I refuse") {
		t.Fatal("configured patterns must replace the defaults")
	}
	off, err := NewRefusalDetector([]string{})
	if err != nil || off.Refusal("I cannot help with that") {
		t.Fatal("an empty pattern list must turn detection off")
	}
	if _, err := NewRefusalDetector([]string{"("}); err == nil {
		t.Fatal("an invalid pattern must be rejected")
	}
}

func TestCost(t *testing.T) {
	got := Cost(1500, 500, Prices{InputPer1K: 0.002, OutputPer1K: 0.006})
	if want := 1.5*0.002 + 0.5*0.006; math.Abs(got-want) > 1e-12 {
		t.Fatalf("Cost = %v, want %v", got, want)
	}
	if Cost(100, 100, Prices{}) != 0 {
		t.Fatal("unpriced version must cost 0")
	}
}

func TestDefaultRedact(t *testing.T) {
	tests := []struct{ in, want string }{
		{"mail me at jane.doe+x@example.co.uk please", "mail me at [email] please"},
		{"card 4111 1111 1111 1111 ok", "card [number] ok"},
		{"call 555-123-4567", "call [number]"},
		{"in 2024 I had 3 cats", "in 2024 I had 3 cats"},
	}
	for _, tt := range tests {
		if got := DefaultRedact(tt.in); got != tt.want {
			t.Errorf("DefaultRedact(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestCapturePrepareCapsOnRuneBoundary(t *testing.T) {
	c := CaptureOptions{Rate: 1, MaxBytes: 5}.withDefaults()
	if got := c.prepare("héllo wörld"); got != "héll" {
		t.Fatalf("prepare = %q, want %q", got, "héll")
	}
	if err := (CaptureOptions{Rate: 2}).Validate(); err == nil {
		t.Fatal("rate above 1 must be rejected")
	}
}

// FuzzRefusalKeysNeverHideAMatch checks that the default patterns' word
// filter only skips texts the regular expression would not match.
func FuzzRefusalKeysNeverHideAMatch(f *testing.F) {
	for _, s := range []string{
		"I'm sorry, but I can't do that.", "I’M SORRY BUT I CANNOT", "I cannot assist with this",
		"I'm unable to comply", "As an AI language model", "I must decline.", "Aſ an AI", "I muſt refuse",
		"I ca\u212a't", "Sure! Here is the answer.",
	} {
		f.Add(s)
	}
	d, err := NewRefusalDetector(DefaultRefusalPatterns)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, text string) {
		window := text
		if len(window) > RefusalWindow {
			window = window[:RefusalWindow]
		}
		if got, want := d.Refusal(text), d.re.MatchString(window); got != want {
			t.Fatalf("Refusal(%q) = %v, the patterns alone %v", text, got, want)
		}
	})
}
