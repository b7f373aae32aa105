package stats

import (
	"math"
	"math/rand/v2"
	"testing"
)

func latencies(seed uint64, n int, scale float64) []float64 {
	r := rand.New(rand.NewPCG(seed, seed))
	xs := make([]float64, n)
	for i := range xs {
		xs[i] = scale * 400 * math.Exp(0.5*r.NormFloat64())
	}
	return xs
}

func BenchmarkMannWhitney50kVs50k(b *testing.B) {
	c, s := latencies(1, 50000, 1.02), latencies(2, 50000, 1)
	for b.Loop() {
		if _, err := MannWhitney(c, s, TwoSided, MWAuto); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkHodgesLehmann50kVs50k(b *testing.B) {
	c, s := latencies(1, 50000, 1.02), latencies(2, 50000, 1)
	for b.Loop() {
		if _, err := HodgesLehmann(c, s, 0.95); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkQuantileRatios50kVs50k(b *testing.B) {
	c, s := latencies(1, 50000, 1.02), latencies(2, 50000, 1)
	for b.Loop() {
		if _, err := QuantileRatios(c, s, []float64{0.5, 0.95, 0.99}, 0.95); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMeanMSPRTLook(b *testing.B) {
	c, s := latencies(1, 100, 1), latencies(2, 900, 1)
	m, err := NewMeanMSPRT(SequentialOptions{Tau: 50})
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		m.Look(c, s)
	}
}
