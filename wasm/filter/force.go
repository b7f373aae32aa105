package filter

import (
	"errors"
	"strconv"

	"github.com/llmcanary/llmcanary/wasm/filterconfig"
)

// ForceKeys holds the digests of the accepted force keys.
type ForceKeys [][sha256Size]byte

// ParseForceKeys decodes hex SHA-256 digests.
func ParseForceKeys(hexDigests []string) (ForceKeys, error) {
	ks := make(ForceKeys, 0, len(hexDigests))
	for i, h := range hexDigests {
		d, ok := filterconfig.ParseDigest(h)
		if !ok {
			return nil, errors.New("force key " + strconv.Itoa(i) + ": not a hex SHA-256 digest")
		}
		ks = append(ks, d)
	}
	return ks, nil
}

// Accepts reports whether key's digest is one of ks. The digests are
// compared in constant time and all of them are compared, so timing tells
// nothing about how close a guess was or which key matched.
func (ks ForceKeys) Accepts(key string) bool {
	if key == "" {
		return false
	}
	sum := sha256Sum(key)
	var match byte
	for i := range ks {
		var diff byte
		for j := range sum {
			diff |= sum[j] ^ ks[i][j]
		}
		// diff is 0 for a match; (diff-1)>>8 is then all ones, else zero.
		match |= byte((uint32(diff) - 1) >> 8)
	}
	return match != 0
}
