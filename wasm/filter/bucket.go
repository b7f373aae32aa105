// Package filter is the logic of llmcanary's proxy-wasm filter as plain Go:
// identity to sticky bucket, model from the body, force-key checks, and the
// per-stream state machine over a narrow Host interface. The wasm module
// (wasm/cmd/filter) binds Host to the proxy-wasm ABI; tests bind it to a
// fake, so everything here runs natively.
package filter

import "github.com/llmcanary/llmcanary/internal/wire"

// Bucket returns the sticky bucket of identity under hashKey: the first
// eight bytes, big-endian, of HMAC-SHA256(hashKey, identity). Any Envoy with
// the same key computes the same bucket, so stickiness needs no shared
// state; without the key a client cannot choose an identity that lands in a
// given version.
func Bucket(hashKey []byte, identity string) uint64 {
	return NewBucketer(hashKey).Bucket(identity)
}

// Bucketer computes Bucket under one key. It hashes the key once (see
// keyedhash.go), so each identity costs two SHA-256 blocks when shorter
// than 56 bytes, and nothing is allocated. It is immutable, so safe for
// concurrent use.
type Bucketer struct{ mac hmacSHA256 }

// NewBucketer returns a Bucketer for hashKey.
func NewBucketer(hashKey []byte) *Bucketer {
	return &Bucketer{mac: newHMACSHA256(hashKey)}
}

// Bucket returns Bucket(hashKey, identity).
func (b *Bucketer) Bucket(identity string) uint64 { return b.Keys(identity).Bucket }

// Keys are what the filter derives from one identity: the sticky bucket
// that picks the version, and the two sampling keys that decide whether a
// stable request is measured (see wire.HeaderSample). The three come from
// disjoint bytes of one keyed hash, so they are independent of each other:
// whether a user is in the canary says nothing about whether they are in
// the stable sample or the background sample.
type Keys struct {
	Bucket             uint64
	Sample, Background uint16 // in [0, wire.SampleScale)
}

// Keys returns the keys of identity: the first three big-endian 8-byte
// words of the MAC, that is its state words paired.
func (b *Bucketer) Keys(identity string) Keys {
	h := b.mac.sum(identity)
	word := func(i int) uint64 { return uint64(h[i])<<32 | uint64(h[i+1]) }
	return Keys{Bucket: word(0), Sample: sampleKey(word(2)), Background: sampleKey(word(4))}
}

// RandomKeys are the keys of a request without identity: each request is
// its own user.
func RandomKeys(random func() uint64) Keys {
	return Keys{Bucket: random(), Sample: sampleKey(random()), Background: sampleKey(random())}
}

// sampleKey reduces 64 hash bits to a key in [0, wire.SampleScale); the
// modulo's bias is below 1e-15.
func sampleKey(x uint64) uint16 { return uint16(x % wire.SampleScale) }

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
