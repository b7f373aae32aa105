package quality

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// ErrNoScore reports a judge reply without a usable score.
var ErrNoScore = errors.New("no score in judge reply")

// scoreRe finds a "score": number pair in free text, quoted or not, with
// a colon or an equals sign.
var scoreRe = regexp.MustCompile(`(?i)["']?\bscore["']?\s*[:=]\s*["']?(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)`)

// ParseScore reads the score from a judge's reply. It accepts the JSON
// object {"score": x} alone, inside a Markdown code fence or surrounded by
// prose, a score: x pair in prose, or a reply that is only a number, and
// returns an error wrapping ErrNoScore when there is no score
// or it is outside [0, 1]. When a reply names several scores, the first
// one counts.
func ParseScore(content string) (float64, error) {
	s := strings.TrimSpace(content)
	var obj struct {
		Score *float64 `json:"score"`
	}
	if err := json.Unmarshal([]byte(s), &obj); err == nil && obj.Score != nil {
		return checkScore(*obj.Score)
	}
	if v, err := strconv.ParseFloat(s, 64); err == nil {
		return checkScore(v)
	}
	m := scoreRe.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("%w: %q", ErrNoScore, truncate(s, 200))
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %q", ErrNoScore, m[0])
	}
	return checkScore(v)
}

func checkScore(v float64) (float64, error) {
	if !(v >= 0 && v <= 1) {
		return 0, fmt.Errorf("%w: score %v is outside [0, 1]", ErrNoScore, v)
	}
	return v, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
