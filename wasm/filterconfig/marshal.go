//go:build !wasip1

package filterconfig

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
)

// The control plane's side of the configuration: writing it. The wasm
// module only reads it (decode.go), so these stay out of its build.

// Marshal returns the JSON the filter reads.
func (c Config) Marshal() ([]byte, error) { return json.Marshal(c) }

// ForceKeyDigest returns the hex SHA-256 digest of a force key, the form
// force_keys stores.
func ForceKeyDigest(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}
