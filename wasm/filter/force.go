package filter

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
)

// ForceKeys holds the digests of the accepted force keys.
type ForceKeys [][sha256.Size]byte

// ParseForceKeys decodes hex SHA-256 digests.
func ParseForceKeys(hexDigests []string) (ForceKeys, error) {
	ks := make(ForceKeys, 0, len(hexDigests))
	for i, h := range hexDigests {
		b, err := hex.DecodeString(h)
		if err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("force key %d: not a hex SHA-256 digest", i)
		}
		ks = append(ks, [sha256.Size]byte(b))
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
	sum := sha256.Sum256([]byte(key))
	match := 0
	for i := range ks {
		match |= subtle.ConstantTimeCompare(sum[:], ks[i][:])
	}
	return match == 1
}
