package stats

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"
)

func TestNoDataAndBadInputReturnSentinels(t *testing.T) {
	some := []float64{1, 2, 3}
	tests := []struct {
		name string
		call func() error
		want error
	}{
		{"mann-whitney without canary", func() error { _, err := MannWhitney(nil, some, TwoSided, MWAuto); return err }, ErrNoSamples},
		{"mann-whitney with NaN", func() error {
			_, err := MannWhitney([]float64{math.NaN()}, some, TwoSided, MWAuto)
			return err
		}, ErrInvalidParameter},
		{"mann-whitney exact too large", func() error {
			_, err := MannWhitney(make([]float64, 60), make([]float64, 60), TwoSided, MWExact)
			return err
		}, ErrInvalidParameter},
		{"hodges-lehmann without stable", func() error { _, err := HodgesLehmann(some, nil, 0.95); return err }, ErrNoSamples},
		{"hodges-lehmann conf of one", func() error { _, err := HodgesLehmann(some, some, 1); return err }, ErrInvalidParameter},
		{"z-test without trials", func() error { _, err := TwoProportionZTest(0, 0, 1, 10, TwoSided); return err }, ErrNoSamples},
		{"fisher with more events than trials", func() error { _, err := FisherExact(11, 10, 1, 10, TwoSided); return err }, ErrInvalidParameter},
		{"wilson without trials", func() error { _, err := Wilson(0, 0, 0.95); return err }, ErrNoSamples},
		{"quantile ratio without canary", func() error { _, err := QuantileRatios(nil, some, []float64{0.5}, 0.95); return err }, ErrNoSamples},
		{"p99 from 50 values", func() error {
			_, err := QuantileRatios(some, make50(), []float64{0.99}, 0.95)
			return err
		}, ErrTooFewSamples},
		{"quantile ratio of zero latency", func() error {
			_, err := QuantileRatios([]float64{0, 1}, some, []float64{0.5}, 0.95)
			return err
		}, ErrNonPositive},
		{"sample size without effect", func() error { _, err := SampleSizeMeans(10, 0, 0.05, 0.8); return err }, ErrInvalidParameter},
		{"rates beyond one", func() error { _, err := SampleSizeProportions(0.95, 0.1, 0.05, 0.8); return err }, ErrInvalidParameter},
		{"srm without requests", func() error { _, err := SampleRatioMismatch([]int{0, 0}, []float64{90, 10}, 0); return err }, ErrNoSamples},
		{"srm with missing weight", func() error { _, err := SampleRatioMismatch([]int{5, 5}, []float64{1}, 0); return err }, ErrInvalidParameter},
		{"adjust nothing", func() error { _, err := Adjust(nil, Holm); return err }, ErrNoSamples},
		{"adjust p above one", func() error { _, err := Adjust([]float64{1.5}, Holm); return err }, ErrInvalidParameter},
		{"versus control with empty variant", func() error {
			_, err := VersusControl(some, []Variant{{Name: "v2"}}, MannWhitneyTest(TwoSided), Holm, 0.05)
			return err
		}, ErrNoSamples},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); !errors.Is(err, tc.want) {
				t.Errorf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func make50() []float64 {
	xs := make([]float64, 50)
	for i := range xs {
		xs[i] = float64(i + 1)
	}
	return xs
}

func TestHodgesLehmannSelectsTheSameDifferencesAsSortingAllPairs(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for _, tc := range []struct {
		name   string
		n1, n2 int
		round  bool
	}{
		{"continuous 1500 vs 1200", 1500, 1200, false},
		{"rounded with ties 700 vs 900", 700, 900, true},
		{"odd pair count 301 vs 99", 301, 99, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			draw := func(n int, scale float64) []float64 {
				xs := make([]float64, n)
				for i := range xs {
					xs[i] = 300 * scale * math.Exp(0.6*r.NormFloat64())
					if tc.round {
						xs[i] = math.Round(xs[i] / 25)
					}
				}
				return xs
			}
			x, y := draw(tc.n1, 1.1), draw(tc.n2, 1)
			diffs := make([]float64, 0, len(x)*len(y))
			for _, a := range x {
				for _, b := range y {
					diffs = append(diffs, a-b)
				}
			}
			slices.Sort(diffs)
			got, err := HodgesLehmann(x, y, 0.95)
			if err != nil {
				t.Fatal(err)
			}
			N := len(diffs)
			want := diffs[N/2]
			if N%2 == 0 {
				want = (diffs[N/2-1] + diffs[N/2]) / 2
			}
			if got.Shift != want {
				t.Errorf("shift = %v, want %v", got.Shift, want)
			}
			if !slices.Contains(diffs, got.CI.Lo) || !slices.Contains(diffs, got.CI.Hi) || got.CI.Lo > got.Shift || got.CI.Hi < got.Shift {
				t.Errorf("interval %v is not a pair of differences around %v", got.CI, got.Shift)
			}
		})
	}
}

func TestFiftyThousandPerGroupStaysExact(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	const n = 50000
	stable := make([]float64, n)
	for i := range stable {
		stable[i] = 400 + 100*r.NormFloat64()
	}
	// The canary is the stable sample shifted by exactly 5 ms, shuffled: the
	// differences canary_i - stable_j are then symmetric around 5, so the
	// median of all 2.5e9 of them is 5 and the interval is centred on it.
	canary := make([]float64, n)
	for i, j := range r.Perm(n) {
		canary[i] = stable[j] + 5
	}
	hl, err := HodgesLehmann(canary, stable, 0.95)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(hl.Shift-5) > 1e-9 || !hl.CI.Contains(5) || math.Abs((hl.CI.Lo+hl.CI.Hi)/2-5) > 1e-6 {
		t.Errorf("hodges-lehmann %v [%v, %v], want 5 at the centre", hl.Shift, hl.CI.Lo, hl.CI.Hi)
	}
	if w := hl.CI.Hi - hl.CI.Lo; w > 4 {
		t.Errorf("interval width %v ms at 50k per group, want < 4 (about 2*1.96*sqrt(2)*100*1.02/sqrt(50000))", w)
	}
	mw, err := MannWhitney(canary, stable, Greater, MWAuto)
	if err != nil {
		t.Fatal(err)
	}
	// Shifted copies: U counts pairs with stable_j + 5 > stable_k.
	want := 0.0
	sorted := slices.Clone(stable)
	slices.Sort(sorted)
	for _, c := range canary {
		want += float64(sort.SearchFloat64s(sorted, c))
	}
	if mw.U != want {
		t.Errorf("U = %v, want %v", mw.U, want)
	}
}

func TestMannWhitneyAllTiedHasNoEvidence(t *testing.T) {
	got, err := MannWhitney([]float64{3, 3, 3, 3, 3, 3, 3, 3, 3}, []float64{3, 3, 3, 3, 3, 3, 3, 3, 3, 3}, TwoSided, MWAuto)
	if err != nil {
		t.Fatal(err)
	}
	if got.PValue != 1 || got.AUC != 0.5 {
		t.Errorf("all tied: %+v, want p 1 and AUC 0.5", got)
	}
}

func TestPowerAndSampleSizeAreInverse(t *testing.T) {
	for _, tc := range []struct {
		name       string
		sd, mde    float64
		base, diff float64
	}{
		{"ttft sd 80 ms, detect 10 ms / error rate 1% to 1.5%", 80, 10, 0.01, 0.005},
		{"latency sd 300 ms, detect 50 ms / refusals 5% to 3%", 300, -50, 0.05, -0.02},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := SampleSizeMeans(tc.sd, tc.mde, 0.05, 0.8)
			if err != nil {
				t.Fatal(err)
			}
			if p, _ := PowerMeans(n, tc.sd, tc.mde, 0.05); !near(p, 0.8, 1e-7) {
				t.Errorf("power at n=%v is %v, want 0.8", n, p)
			}
			n, err = SampleSizeProportions(tc.base, tc.diff, 0.05, 0.9)
			if err != nil {
				t.Fatal(err)
			}
			if p, _ := PowerProportions(n, tc.base, tc.diff, 0.05); !near(p, 0.9, 1e-9) {
				t.Errorf("power at n=%v is %v, want 0.9", n, p)
			}
		})
	}
}

func TestSampleRatioMismatchWithZeroWeightArm(t *testing.T) {
	tests := []struct {
		name     string
		observed []int
		weights  []float64
		mismatch bool
	}{
		{"retired arm without traffic is ignored", []int{900, 100, 0}, []float64{90, 10, 0}, false},
		{"retired arm that still gets traffic is a mismatch", []int{900, 100, 3}, []float64{90, 10, 0}, true},
		{"single live arm has nothing to compare", []int{1000, 0}, []float64{1, 0}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := SampleRatioMismatch(tc.observed, tc.weights, 0)
			if err != nil {
				t.Fatal(err)
			}
			if got.Mismatch != tc.mismatch {
				t.Errorf("mismatch = %v (%+v), want %v", got.Mismatch, got, tc.mismatch)
			}
		})
	}
}

func TestVersusControlAdjustsAcrossVariants(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 9))
	draw := func(n int, mean float64) []float64 {
		xs := make([]float64, n)
		for i := range xs {
			xs[i] = mean + 50*r.NormFloat64()
		}
		return xs
	}
	control := draw(2000, 400)
	variants := []Variant{
		{Name: "v2-same", Values: draw(300, 400)},
		{Name: "v3-slower", Values: draw(300, 440)},
		{Name: "v4-same", Values: draw(300, 400)},
	}
	got, err := VersusControl(control, variants, MannWhitneyTest(Greater), Holm, 0.05)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].Name != "v2-same" || got[1].Name != "v3-slower" {
		t.Fatalf("results out of order: %+v", got)
	}
	for _, c := range got {
		if c.Adjusted < c.PValue {
			t.Errorf("%s: adjusted %v below raw %v", c.Name, c.Adjusted, c.PValue)
		}
		if want := c.Name == "v3-slower"; c.Reject != want {
			t.Errorf("%s: reject = %v, want %v (%+v)", c.Name, c.Reject, want, c)
		}
	}
}
