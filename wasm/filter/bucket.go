// Package filter is the logic of llmcanary's proxy-wasm filter as plain Go:
// identity to sticky bucket, model from the body, force-key checks, and the
// per-stream state machine over a narrow Host interface. The wasm module
// (wasm/cmd/filter) binds Host to the proxy-wasm ABI; tests bind it to a
// fake, so everything here runs natively.
package filter

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"hash"
)

// Bucket returns the sticky bucket of identity under hashKey: the first
// eight bytes, big-endian, of HMAC-SHA256(hashKey, identity). Any Envoy with
// the same key computes the same bucket, so stickiness needs no shared
// state; without the key a client cannot choose an identity that lands in a
// given version.
func Bucket(hashKey []byte, identity string) uint64 {
	return NewBucketer(hashKey).Bucket(identity)
}

// Bucketer computes Bucket under one key, reusing one keyed HMAC state:
// hmac.New hashes the key into fresh inner and outer states and allocates
// them, which was most of the filter's work per request; Reset restores the
// keyed state instead. Not safe for concurrent use — a proxy-wasm VM runs
// one callback at a time.
type Bucketer struct {
	mac hash.Hash
	buf []byte // the identity's bytes
	sum [sha256.Size]byte
}

// NewBucketer returns a Bucketer for hashKey.
func NewBucketer(hashKey []byte) *Bucketer {
	return &Bucketer{mac: hmac.New(sha256.New, hashKey)}
}

// Bucket returns Bucket(hashKey, identity).
func (b *Bucketer) Bucket(identity string) uint64 {
	b.mac.Reset()
	b.buf = append(b.buf[:0], identity...)
	b.mac.Write(b.buf)
	return binary.BigEndian.Uint64(b.mac.Sum(b.sum[:0]))
}

// PickCluster returns the index of the cluster Envoy's weighted_clusters
// picks for bucket when it is the value of the route's header_name, or -1
// when every weight is zero. It mirrors Envoy's rule: take bucket modulo
// the sum of the weights and walk the clusters in order, each owning the
// half-open range [begin, begin+weight). With stable listed first and the
// canary last, the canary owns the top of the range, so raising its weight
// only adds buckets to it: a user in the canary stays there.
func PickCluster(bucket uint64, weights []uint32) int {
	var total uint64
	for _, w := range weights {
		total += uint64(w)
	}
	if total == 0 {
		return -1
	}
	selected := bucket % total
	var begin uint64
	for i, w := range weights {
		end := begin + uint64(w)
		if selected >= begin && selected < end {
			return i
		}
		begin = end
	}
	return -1
}
