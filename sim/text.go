package sim

import (
	"math"
	"strings"
	"unicode/utf8"
)

// BadAnswerMarker is the confidently false sentence every bad answer
// contains, whole, among its tokens (unless max_tokens cuts it short). A
// judge that finds it scores the answer 0; see JudgeScore.
const BadAnswerMarker = "The Eiffel Tower is in Berlin."

// RefusalText is the whole answer of a refusal.
const RefusalText = "I'm sorry, but I can't help with that."

var (
	markerTokens  = splitWords(BadAnswerMarker)
	refusalTokens = splitWords(RefusalText)
)

// splitWords makes one token per word, each but the first with its leading
// space, so the tokens concatenate back to s.
func splitWords(s string) []string {
	fields := strings.Fields(s)
	for i := 1; i < len(fields); i++ {
		fields[i] = " " + fields[i]
	}
	return fields
}

// vocabulary of good answers. None of these words, in any order, spells the
// marker: it contains neither "Eiffel" nor "Berlin".
var vocabulary = strings.Fields(`the model answers with care and the result is
	clear because each step follows from the last one so that readers can check
	every claim against known facts while the summary stays short useful and
	accurate for most practical questions about science history language code
	data travel cooking music sport health and daily life`)

// word is token i of an answer with the given text seed: a vocabulary word,
// with a leading space except at the start.
func word(seed uint64, i int) string {
	// splitmix64 over seed and position: cheap, stateless, deterministic.
	x := seed + uint64(i)*0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	x ^= x >> 31
	w := vocabulary[x%uint64(len(vocabulary))]
	if i == 0 {
		return strings.ToUpper(w[:1]) + w[1:]
	}
	return " " + w
}

// JudgeScore grades an answer the way the judge mode does: 0 when it
// contains BadAnswerMarker, 1 otherwise.
func JudgeScore(text string) float64 {
	if strings.Contains(text, BadAnswerMarker) {
		return 0
	}
	return 1
}

// countPromptTokens is the tokenizer stand-in: characters times the
// profile's tokens per character, rounded up, at least 1.
func countPromptTokens(chars int, perChar float64) int {
	return max(1, int(math.Ceil(float64(chars)*perChar)))
}

func runeCount(s string) int { return utf8.RuneCountInString(s) }
