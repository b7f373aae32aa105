package filter

import (
	"crypto/hmac"
	"crypto/sha256"
	"math/rand/v2"
	"testing"
)

// The bucket is part of the external contract: the filter's own SHA-256
// and HMAC must give what crypto/sha256 and crypto/hmac give, for every
// length around the block boundaries and for keys longer than a block.
func TestKeyedHashIsCryptoHMACSHA256(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	randBytes := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	for n := 0; n <= 300; n++ {
		msg := randBytes(n)
		if got, want := sha256Sum(string(msg)), sha256.Sum256(msg); got != want {
			t.Fatalf("sha256Sum of %d bytes = %x, want %x", n, got, want)
		}
	}
	keyLens := []int{0, 1, 16, 23, 32, 55, 56, 63, 64, 65, 100, 128, 200}
	for _, kl := range keyLens {
		key := randBytes(kl)
		m := newHMACSHA256(key)
		b := NewBucketer(key)
		for n := 0; n <= 200; n++ {
			msg := randBytes(n)
			want := hmac.New(sha256.New, key)
			want.Write(msg)
			sum := want.Sum(nil)
			if got := m.sum(string(msg)).bytes(); string(got[:]) != string(sum) {
				t.Fatalf("HMAC with a %d-byte key of %d bytes = %x, want %x", kl, n, got, sum)
			}
			if got, want := b.Keys(string(msg)), keysOf(sum); got != want {
				t.Fatalf("Keys with a %d-byte key of %d bytes = %+v, want %+v", kl, n, got, want)
			}
		}
	}
}

// keysOf is Keys as written over crypto/hmac's output: bucket, sample and
// background from the first three big-endian 8-byte words of the MAC.
func keysOf(sum []byte) Keys {
	word := func(b []byte) uint64 {
		var v uint64
		for _, c := range b[:8] {
			v = v<<8 | uint64(c)
		}
		return v
	}
	return Keys{Bucket: word(sum[0:]), Sample: sampleKey(word(sum[8:])), Background: sampleKey(word(sum[16:]))}
}

func FuzzKeyedHashIsCryptoHMACSHA256(f *testing.F) {
	f.Add([]byte("unit-test-hash-key-0123"), "alice")
	f.Fuzz(func(t *testing.T, key []byte, msg string) {
		want := hmac.New(sha256.New, key)
		want.Write([]byte(msg))
		if got, want := NewBucketer(key).Keys(msg), keysOf(want.Sum(nil)); got != want {
			t.Fatalf("Keys = %+v, want %+v", got, want)
		}
	})
}

func TestBucketerAllocatesNothing(t *testing.T) {
	b := NewBucketer(testKey)
	if n := testing.AllocsPerRun(100, func() { b.Keys("user-1234") }); n != 0 {
		t.Errorf("%v allocations per identity, want 0", n)
	}
}
