package quality

import (
	"errors"
	"testing"
)

func TestParseScore(t *testing.T) {
	cases := []struct {
		name    string
		content string
		want    float64
		ok      bool
	}{
		{"plain JSON", `{"score": 1}`, 1, true},
		{"JSON with spaces and newline", "\n  {\"score\": 0.0}\n", 0, true},
		{"JSON in a code fence", "```json\n{\"score\": 0.75}\n```", 0.75, true},
		{"JSON after prose", `The answer is mostly right. {"score": 0.8}`, 0.8, true},
		{"JSON with more fields", `{"reason": "wrong city", "score": 0}`, 0, true},
		{"score as a quoted number", `{"score": "0.9"}`, 0.9, true},
		{"single quotes", `{'score': 0.5}`, 0.5, true},
		{"prose pair", "Score: 0.6 because it is partly correct", 0.6, true},
		{"equals sign", "score=1.0", 1, true},
		{"only a number", " 0.25 ", 0.25, true},
		{"exponent", `{"score": 1e-1}`, 0.1, true},
		{"first of several scores", `score: 0.2, revised score: 0.9`, 0.2, true},
		{"above one", `{"score": 1.5}`, 0, false},
		{"negative", `{"score": -0.2}`, 0, false},
		{"a number outside the range", "7", 0, false},
		{"no score", "I cannot grade this answer.", 0, false},
		{"empty", "", 0, false},
		{"score word without a number", `{"score": "high"}`, 0, false},
		{"a word ending in score", `underscore: 0.5`, 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseScore(tc.content)
			if tc.ok {
				if err != nil || got != tc.want {
					t.Fatalf("ParseScore(%q) = %v, %v; want %v", tc.content, got, err, tc.want)
				}
				return
			}
			if !errors.Is(err, ErrNoScore) {
				t.Fatalf("ParseScore(%q) = %v, %v; want ErrNoScore", tc.content, got, err)
			}
		})
	}
}
