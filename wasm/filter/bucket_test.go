package filter

import (
	"fmt"
	"math"
	"testing"

	"gonum.org/v1/gonum/stat/distuv"

	"github.com/llmcanary/llmcanary/internal/wire"
)

var testKey = []byte("unit-test-hash-key-0123")

func TestBucketIsUniformOverBins(t *testing.T) {
	const ids, bins = 100_000, 100
	counts := make([]float64, bins)
	for i := 0; i < ids; i++ {
		counts[Bucket(testKey, fmt.Sprintf("user-%d", i))%bins]++
	}
	expected := float64(ids) / bins
	var chi2 float64
	for _, c := range counts {
		chi2 += (c - expected) * (c - expected) / expected
	}
	p := distuv.ChiSquared{K: bins - 1}.Survival(chi2)
	if p <= 0.001 {
		t.Fatalf("chi-square %.1f over %d bins, p=%.5f: buckets are not uniform", chi2, bins, p)
	}
	t.Logf("chi-square %.1f, p=%.3f", chi2, p)
}

func TestBucketIsStableAndKeyed(t *testing.T) {
	cases := []struct {
		name   string
		k1, k2 string
		i1, i2 string
		same   bool
	}{
		{"same identity and key give the same bucket", "key-aaaaaaaaaaaaaaaa", "key-aaaaaaaaaaaaaaaa", "alice", "alice", true},
		{"another identity gives another bucket", "key-aaaaaaaaaaaaaaaa", "key-aaaaaaaaaaaaaaaa", "alice", "bob", false},
		{"another key gives another bucket", "key-aaaaaaaaaaaaaaaa", "key-bbbbbbbbbbbbbbbb", "alice", "alice", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b1, b2 := Bucket([]byte(c.k1), c.i1), Bucket([]byte(c.k2), c.i2)
			if (b1 == b2) != c.same {
				t.Fatalf("buckets %d and %d, want same=%v", b1, b2, c.same)
			}
		})
	}
	// A known answer (HMAC-SHA256 computed independently): changing the
	// hash would move every user, so it must be a deliberate change.
	if got, want := Bucket([]byte("k"), "alice"), uint64(17033487171165746617); got != want {
		t.Fatalf("Bucket(k, alice) = %d, want %d", got, want)
	}
}

func TestPickClusterFollowsEnvoysRule(t *testing.T) {
	cases := []struct {
		name    string
		bucket  uint64
		weights []uint32
		want    int
	}{
		{"first range starts at zero", 0, []uint32{90, 10}, 0},
		{"last value of the first range", 89, []uint32{90, 10}, 0},
		{"first value of the second range", 90, []uint32{90, 10}, 1},
		{"modulo the total weight", 190, []uint32{90, 10}, 1},
		{"zero-weight clusters own nothing", 5, []uint32{0, 10, 0}, 1},
		{"all weight on the canary", 123456789, []uint32{0, 10000}, 1},
		{"largest bucket", ^uint64(0), []uint32{9000, 1000}, int(^uint64(0) % 10000 / 9000)},
		{"no weight picks nothing", 7, []uint32{0, 0}, -1},
		{"three versions", 9950, []uint32{9000, 900, 100}, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := PickCluster(c.bucket, c.weights); got != c.want {
				t.Fatalf("PickCluster(%d, %v) = %d, want %d", c.bucket, c.weights, got, c.want)
			}
		})
	}
}

// rollout is the canary's weight at each stage, out of 10000.
var rollout = []uint32{200, 500, 1000, 2500, 5000, 10000}

func TestStickyUserStaysInCanaryAsWeightGrows(t *testing.T) {
	const users = 50_000
	cases := []struct {
		name         string
		totals       []uint32 // total weight at each stage
		wantMonotone bool
	}{
		{"constant total, stable first, canary last: monotone",
			[]uint32{10000, 10000, 10000, 10000, 10000, 10000}, true},
		// The same percentages on a total that changes between stages
		// reshuffle users: why weights are never renormalised.
		{"changing total: users leave the canary",
			[]uint32{10000, 1000, 10000, 100, 10000, 1000}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			left := 0
			for i := 0; i < users; i++ {
				b := Bucket(testKey, fmt.Sprintf("user-%d", i))
				was := false
				for s, w := range rollout {
					total := c.totals[s]
					canary := uint32(uint64(w) * uint64(total) / 10000)
					now := PickCluster(b, []uint32{total - canary, canary}) == 1
					if was && !now {
						left++
					}
					was = now
				}
			}
			if monotone := left == 0; monotone != c.wantMonotone {
				t.Fatalf("%d users left the canary as its weight grew; want monotone=%v", left, c.wantMonotone)
			}
		})
	}
}

func TestCanaryShareMatchesWeight(t *testing.T) {
	const users = 100_000
	for _, w := range rollout {
		n := 0
		for i := 0; i < users; i++ {
			if PickCluster(Bucket(testKey, fmt.Sprintf("u%d", i)), []uint32{10000 - w, w}) == 1 {
				n++
			}
		}
		p := float64(w) / 10000
		share := float64(n) / users
		// 5 standard deviations of a binomial proportion.
		if sd := 5 * math.Sqrt(p*(1-p)/users); share < p-sd || share > p+sd {
			t.Errorf("weight %d: canary share %.4f, want %.4f±%.4f", w, share, p, sd)
		}
	}
}

func TestBucketerReusedGivesBucketsOfFreshHMACs(t *testing.T) {
	b := NewBucketer(testKey)
	for _, id := range []string{"alice", "", "bob", "alice", "a-much-longer-identity-than-one-sha256-block-of-sixty-four-bytes-0123456789"} {
		if got, want := b.Bucket(id), Bucket(testKey, id); got != want {
			t.Fatalf("reused Bucketer gives %d for %q, a fresh HMAC %d", got, id, want)
		}
	}
}

// The canary is chosen by the bucket, the stable sample by the sample key
// and the users measured before a rollout by the background key. The
// analyzer's comparisons are fair only if these are independent: a user's
// being measured must say nothing about their arm, or about whether they
// have a baseline from before the rollout.
func TestSamplingKeysAreUniformAndIndependentOfTheBucket(t *testing.T) {
	const ids = 200_000
	b := NewBucketer(testKey)
	var n [2][2][2]float64 // canary (top 10 % of buckets) × sampled (key < 20 %) × background (key < 30 %)
	for i := 0; i < ids; i++ {
		k := b.Keys(fmt.Sprintf("user-%d", i))
		if k.Sample >= wire.SampleScale || k.Background >= wire.SampleScale {
			t.Fatalf("keys %+v out of range", k)
		}
		canary := PickCluster(k.Bucket, []uint32{9000, 1000}) == 1
		n[b2i(canary)][b2i(k.Sample < 2000)][b2i(k.Background < 3000)]++
	}
	// Chi-square test of independence of the three binary variables
	// against the product of their margins.
	var m [3][2]float64
	for a := 0; a < 2; a++ {
		for s := 0; s < 2; s++ {
			for g := 0; g < 2; g++ {
				m[0][a] += n[a][s][g]
				m[1][s] += n[a][s][g]
				m[2][g] += n[a][s][g]
			}
		}
	}
	for i, want := range []float64{0.1, 0.2, 0.3} {
		if got := m[i][1] / ids; math.Abs(got-want) > 0.005 {
			t.Errorf("variable %d: share %.4f, want %.2f", i, got, want)
		}
	}
	var chi2 float64
	for a := 0; a < 2; a++ {
		for s := 0; s < 2; s++ {
			for g := 0; g < 2; g++ {
				e := m[0][a] * m[1][s] * m[2][g] / (ids * ids)
				chi2 += (n[a][s][g] - e) * (n[a][s][g] - e) / e
			}
		}
	}
	if p := (distuv.ChiSquared{K: 4}).Survival(chi2); p <= 0.001 {
		t.Fatalf("chi-square %.1f, p=%.5f: arm, stable sample and background are not independent", chi2, p)
	}
	if b.Keys("alice") != NewBucketer(testKey).Keys("alice") {
		t.Fatal("an identity's keys are not stable")
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
