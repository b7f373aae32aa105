package stats

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// The e-value's closed form against the integral it stands for, by the
// midpoint rule.
func TestSignTestEValueIsTheMixtureIntegral(t *testing.T) {
	for _, c := range [][2]int{{0, 1}, {3, 7}, {10, 2}, {25, 40}} {
		w, l := c[0], c[1]
		const k = 200000
		var sum float64
		for i := range k {
			q := 0.5 + (float64(i)+0.5)/k*0.5
			sum += math.Pow(2*q, float64(l)) * math.Pow(2*(1-q), float64(w)) * 2 / k * 0.5
		}
		res, err := SignTest(w, l, 0, 0.05)
		if err != nil {
			t.Fatal(err)
		}
		if want := math.Min(1, 1/sum); math.Abs(res.PValue-want) > 1e-6*math.Max(1, want) {
			t.Errorf("wins %d losses %d: p %v, integral gives %v", w, l, res.PValue, want)
		}
	}
}

func TestSignTestNeverRejectsMoreThanAlphaUnderTheNullHoweverOftenItLooks(t *testing.T) {
	const runs, pairs, alpha = 1000, 250, 0.05
	for _, q := range []float64{0.5, 0.4} {
		r := rand.New(rand.NewPCG(1, uint64(q*100)))
		rejected := 0
		for range runs {
			if firstLook(r, q, alpha, pairs, func(res SignResult) bool { return res.Harm }) > 0 {
				rejected++
			}
		}
		// Ville bounds the rate by alpha; 3 standard errors of slack.
		if limit := alpha + 3*math.Sqrt(alpha*(1-alpha)/runs); float64(rejected)/runs > limit {
			t.Errorf("loss share %v: rejected in %d of %d runs looking after every pair, above %.3f", q, rejected, runs, limit)
		}
		t.Logf("loss share %v: %d of %d runs rejected", q, rejected, runs)
	}
}

func TestSignTestCatchesACanaryThatLosesMostDecidedPairsWithinTens(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 2))
	var needed []float64
	for range 200 {
		w, l := 0, 0
		for n := 1; n <= 1000; n++ {
			if r.Float64() < 0.85 {
				l++
			} else {
				w++
			}
			if res, _ := SignTest(w, l, 3*n, 0.05); res.Harm {
				needed = append(needed, float64(n))
				break
			}
		}
	}
	if len(needed) < 200 {
		t.Fatalf("caught in %d of 200 runs", len(needed))
	}
	if med := medianOf(needed); med > 40 {
		t.Fatalf("a canary losing 85 %% of decided pairs needed a median of %v of them", med)
	}
}

// firstLook draws up to pairs decided pairs, each lost with probability q,
// tests them at alpha after each, and returns the first number of pairs
// at which hit holds, 0 if none.
func firstLook(r *rand.Rand, q, alpha float64, pairs int, hit func(SignResult) bool) int {
	w, l := 0, 0
	for n := 1; n <= pairs; n++ {
		if r.Float64() < q {
			l++
		} else {
			w++
		}
		if res, _ := SignTest(w, l, 0, alpha); hit(res) {
			return n
		}
	}
	return 0
}

func medianOf(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func TestSignTestConfidenceSequenceCoversTheLossShareAtEveryLook(t *testing.T) {
	const runs, pairs, alpha, q = 500, 300, 0.1, 0.3
	r := rand.New(rand.NewPCG(3, 3))
	missed := 0
	for range runs {
		if firstLook(r, q, alpha, pairs, func(res SignResult) bool { return !res.CI.Contains(q) }) > 0 {
			missed++
		}
	}
	if float64(missed)/runs > alpha {
		t.Fatalf("the sequence missed the loss share at some look in %d of %d runs, above alpha %v", missed, runs, alpha)
	}
}

func TestSignTestWithoutDecidedPairsSaysNothing(t *testing.T) {
	res, err := SignTest(0, 0, 50, 0.05)
	if err != nil || res.Harm || res.PValue != 1 || res.CI != (Interval{0, 1}) || !math.IsNaN(res.LossShare) {
		t.Fatalf("%+v, %v", res, err)
	}
	if _, err := SignTest(-1, 0, 0, 0.05); !errors.Is(err, ErrInvalidParameter) {
		t.Fatalf("negative counts: %v", err)
	}
}

func TestPairedMeanTestFindsASlowerCanaryAndClearsAnEqualOne(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 4))
	draw := func(shift float64, n int) (float64, float64) {
		xs := make([]float64, n)
		for i := range xs {
			xs[i] = shift + 0.3*r.NormFloat64()
		}
		return meanVar(xs)
	}
	// Log latency ratios: 50 % slower, tested against 3 %.
	m, v := draw(math.Log(1.5), 200)
	slow, err := PairedMeanTest(200, m, v, math.Log(1.03), math.Log(1.2), 0.05, 30)
	if err != nil || !slow.Harm || !slow.CI.Contains(math.Log(1.5)) {
		t.Fatalf("50 %% slower: %+v %v", slow, err)
	}
	m, v = draw(0, 200)
	same, err := PairedMeanTest(200, m, v, math.Log(1.03), math.Log(1.2), 0.05, 30)
	if err != nil || same.Harm || same.CI.Hi > math.Log(1.2) {
		t.Fatalf("equal: %+v %v", same, err)
	}
	if _, err := PairedMeanTest(5, m, v, 0, 0.2, 0.05, 30); !errors.Is(err, ErrTooFewSamples) {
		t.Fatalf("5 pairs: %v", err)
	}
}

func meanVar(xs []float64) (float64, float64) {
	var s, ss float64
	for _, x := range xs {
		s += x
	}
	m := s / float64(len(xs))
	for _, x := range xs {
		ss += (x - m) * (x - m)
	}
	return m, ss / float64(len(xs)-1)
}
