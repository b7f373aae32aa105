package filter

import "math/bits"

// The keyed hash behind the bucket is HMAC-SHA256 (RFC 2104, FIPS 180-4).
// It is written here over a small SHA-256 rather than taken from
// crypto/hmac and crypto/sha256: those link Go's FIPS 140 module (AES,
// GCM, SHA-3, SHA-512, a DRBG, os and time), over half a megabyte of wasm
// that V8 compiles before Envoy serves. Written for one key, it also does
// the least work per request: the key's inner and outer pad blocks are
// hashed once, so an identity shorter than 56 bytes costs two SHA-256
// block computations and no allocation. keyedhash_test.go checks it
// against crypto/hmac and crypto/sha256 on many inputs.

const (
	sha256Size  = 32
	sha256Block = 64
)

// sha256State is the eight-word chaining value of SHA-256.
type sha256State [8]uint32

var sha256Init = sha256State{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19}

var sha256K = [64]uint32{
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}

// block runs SHA-256's compression function over one 64-byte block.
func (h *sha256State) block(p *[sha256Block]byte) {
	var w [64]uint32
	for i := 0; i < 16; i++ {
		w[i] = uint32(p[4*i])<<24 | uint32(p[4*i+1])<<16 | uint32(p[4*i+2])<<8 | uint32(p[4*i+3])
	}
	for i := 16; i < 64; i++ {
		v1, v2 := w[i-2], w[i-15]
		s1 := bits.RotateLeft32(v1, -17) ^ bits.RotateLeft32(v1, -19) ^ v1>>10
		s0 := bits.RotateLeft32(v2, -7) ^ bits.RotateLeft32(v2, -18) ^ v2>>3
		w[i] = s1 + w[i-7] + s0 + w[i-16]
	}
	a, b, c, d, e, f, g, hh := h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]
	for i := 0; i < 64; i++ {
		t1 := hh + (bits.RotateLeft32(e, -6) ^ bits.RotateLeft32(e, -11) ^ bits.RotateLeft32(e, -25)) + (e&f ^ ^e&g) + sha256K[i] + w[i]
		t2 := (bits.RotateLeft32(a, -2) ^ bits.RotateLeft32(a, -13) ^ bits.RotateLeft32(a, -22)) + (a&b ^ a&c ^ b&c)
		hh, g, f, e, d, c, b, a = g, f, e, d+t1, c, b, a, t1+t2
	}
	h[0] += a
	h[1] += b
	h[2] += c
	h[3] += d
	h[4] += e
	h[5] += f
	h[6] += g
	h[7] += hh
}

// finish hashes msg after prefix bytes already absorbed into h (a
// multiple of the block size) and returns the final state, whose words,
// big-endian, are the digest.
func (h sha256State) finish(prefix uint64, msg string) sha256State {
	bitLen := (prefix + uint64(len(msg))) << 3
	var p [sha256Block]byte
	for len(msg) >= sha256Block {
		copy(p[:], msg)
		h.block(&p)
		msg = msg[sha256Block:]
	}
	n := copy(p[:], msg)
	p[n] = 0x80
	clear(p[n+1:])
	if n >= sha256Block-8 {
		h.block(&p)
		clear(p[:])
	}
	for i := 0; i < 8; i++ {
		p[sha256Block-1-i] = byte(bitLen >> (8 * i))
	}
	h.block(&p)
	return h
}

// bytes returns the digest of a final state.
func (h sha256State) bytes() (d [sha256Size]byte) {
	for i, v := range h {
		d[4*i], d[4*i+1], d[4*i+2], d[4*i+3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
	}
	return d
}

// sha256Sum returns the SHA-256 digest of msg.
func sha256Sum(msg string) [sha256Size]byte { return sha256Init.finish(0, msg).bytes() }

// hmacSHA256 is HMAC-SHA256 under one key: the SHA-256 states after the
// key's inner and outer pad blocks.
type hmacSHA256 struct{ inner, outer sha256State }

func newHMACSHA256(key []byte) hmacSHA256 {
	var k [sha256Block]byte
	if len(key) > sha256Block {
		d := sha256Sum(string(key))
		copy(k[:], d[:])
	} else {
		copy(k[:], key)
	}
	var m hmacSHA256
	var pad [sha256Block]byte
	m.inner, m.outer = sha256Init, sha256Init
	for i := range k {
		pad[i] = k[i] ^ 0x36
	}
	m.inner.block(&pad)
	for i := range k {
		pad[i] = k[i] ^ 0x5c
	}
	m.outer.block(&pad)
	return m
}

// sum returns HMAC-SHA256(key, msg) as a final SHA-256 state: its words,
// big-endian, are the MAC.
func (m *hmacSHA256) sum(msg string) sha256State {
	in := m.inner.finish(sha256Block, msg)
	// The outer hash's message is the inner digest: one block with it, the
	// padding and the length of pad block and digest.
	var p [sha256Block]byte
	for i, v := range in {
		p[4*i], p[4*i+1], p[4*i+2], p[4*i+3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
	}
	p[sha256Size] = 0x80
	const bitLen = (sha256Block + sha256Size) * 8
	p[sha256Block-2], p[sha256Block-1] = bitLen>>8, bitLen&0xff
	out := m.outer
	out.block(&p)
	return out
}
