package stats

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"
)

func TestMeanMSPRTMatchesJohariEqualSizeFormula(t *testing.T) {
	// With n per group and a common variance sigma^2, Johari et al. write
	// Lambda = sqrt(2s2/(2s2+n tau2)) exp(n^2 tau2 d^2 / (4 s2 (2s2 + n tau2))).
	r := rand.New(rand.NewPCG(1, 2))
	tests := []struct {
		name       string
		n          int
		shift, tau float64
	}{
		{name: "small shift, wide mixture", n: 200, shift: 0.1, tau: 1},
		{name: "large shift, narrow mixture", n: 500, shift: 0.3, tau: 0.05},
		{name: "no shift", n: 1000, shift: 0, tau: 0.2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			stable := make([]float64, tc.n)
			canary := make([]float64, tc.n)
			for i := range stable {
				stable[i] = r.NormFloat64()
				canary[i] = stable[i] + tc.shift // same variance, difference exactly shift
			}
			m, err := NewMeanMSPRT(SequentialOptions{Tau: tc.tau})
			if err != nil {
				t.Fatal(err)
			}
			got, err := m.Look(canary, stable)
			if err != nil {
				t.Fatal(err)
			}
			s2 := Summarize(stable).Variance()
			n, tau2, d := float64(tc.n), tc.tau*tc.tau, tc.shift
			lambda := math.Sqrt(2*s2/(2*s2+n*tau2)) * math.Exp(n*n*tau2*d*d/(4*s2*(2*s2+n*tau2)))
			want := math.Min(1, 1/lambda)
			if !near(got.PValue, want, 1e-9) {
				t.Errorf("p = %.12g, want %.12g", got.PValue, want)
			}
		})
	}
}

func TestMixtureRadiusIsTheRejectionBoundary(t *testing.T) {
	for _, tc := range []struct{ v, tau2, alpha float64 }{
		{v: 0.01, tau2: 0.04, alpha: 0.05},
		{v: 4, tau2: 1, alpha: 0.01},
		{v: 1e-6, tau2: 1e-4, alpha: 0.1},
	} {
		r := MixtureRadius(tc.v, tc.tau2, tc.alpha)
		if got := MixtureLogLR(3+r, 3, tc.v, tc.tau2); math.Abs(got-math.Log(1/tc.alpha)) > 1e-9 {
			t.Errorf("%+v: log Lambda at the radius = %v, want log(1/alpha) = %v", tc, got, math.Log(1/tc.alpha))
		}
	}
}

// monitorCases builds one of each monitor and a data generator whose effect
// flips sign halfway, the situation in which a naive p-value bounces back up.
func monitorCases(t *testing.T) []struct {
	name string
	mon  Monitor
	gen  func(r *rand.Rand, look int, canary bool) float64
} {
	t.Helper()
	mean, err := NewMeanMSPRT(SequentialOptions{Tau: 20, MinSamples: 30})
	if err != nil {
		t.Fatal(err)
	}
	prop, err := NewProportionMSPRT(SequentialOptions{Tau: 0.05, MinSamples: 30})
	if err != nil {
		t.Fatal(err)
	}
	sup, err := NewSuperiorityMonitor(SequentialOptions{Tau: 0.1})
	if err != nil {
		t.Fatal(err)
	}
	latency := func(r *rand.Rand, look int, canary bool) float64 {
		x := 400 * math.Exp(0.5*r.NormFloat64())
		if canary && look < 5 {
			x *= 1.15
		}
		return x
	}
	return []struct {
		name string
		mon  Monitor
		gen  func(r *rand.Rand, look int, canary bool) float64
	}{
		{name: "mean msprt", mon: mean, gen: latency},
		{name: "superiority", mon: sup, gen: latency},
		{name: "proportion msprt", mon: prop, gen: func(r *rand.Rand, look int, canary bool) float64 {
			p := 0.05
			if canary && look < 5 {
				p = 0.09
			}
			if r.Float64() < p {
				return 1
			}
			return 0
		}},
	}
}

func TestMonitorsPValueNeverIncreasesAndIntervalNeverWidens(t *testing.T) {
	for _, tc := range monitorCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(7, 7))
			prev := SequentialResult{PValue: 1, CI: unbounded}
			valid := 0
			for look := range 15 {
				var canary, stable []float64
				for range 300 {
					if r.Float64() < 0.2 {
						canary = append(canary, tc.gen(r, look, true))
					} else {
						stable = append(stable, tc.gen(r, look, false))
					}
				}
				got, err := tc.mon.Look(canary, stable)
				if err != nil && !errors.Is(err, ErrTooFewSamples) {
					t.Fatal(err)
				}
				if err == nil {
					valid++
				}
				if got.PValue > prev.PValue {
					t.Errorf("look %d: p rose from %v to %v", look, prev.PValue, got.PValue)
				}
				if got.CI.Lo < prev.CI.Lo || got.CI.Hi > prev.CI.Hi {
					t.Errorf("look %d: interval widened from %v to %v", look, prev.CI, got.CI)
				}
				if prev.Reject && !got.Reject {
					t.Errorf("look %d: rejection withdrawn", look)
				}
				if got.Reject != (got.PValue <= 0.05) {
					t.Errorf("look %d: reject %v with p %v", look, got.Reject, got.PValue)
				}
				if got.Looks != look+1 {
					t.Errorf("looks = %d, want %d", got.Looks, look+1)
				}
				if got != tc.mon.Result() {
					t.Errorf("Result() = %+v, Look returned %+v", tc.mon.Result(), got)
				}
				prev = got
			}
			if valid < 10 {
				t.Errorf("only %d valid looks", valid)
			}
			if math.IsInf(prev.CI.Lo, 0) || math.IsInf(prev.CI.Hi, 0) {
				t.Errorf("interval still unbounded after all looks: %v", prev.CI)
			}
		})
	}
}

func TestMonitorsHoldBeforeMinSamples(t *testing.T) {
	mean, _ := NewMeanMSPRT(SequentialOptions{Tau: 1})
	prop, _ := NewProportionMSPRT(SequentialOptions{Tau: 0.05})
	sup, _ := NewSuperiorityMonitor(SequentialOptions{Tau: 0.1, MinSamples: 50})
	huge := make([]float64, 40)
	for i := range huge {
		huge[i] = 1000 + float64(i) // canary far worse than stable
	}
	zero := make([]float64, 40)
	for _, tc := range []struct {
		name string
		mon  Monitor
	}{
		{"mean msprt below 100 per group", mean},
		{"proportion msprt below 100 per group", prop},
		{"superiority below 50 pairs", sup},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.mon.Look(huge, zero)
			if !errors.Is(err, ErrTooFewSamples) {
				t.Fatalf("err = %v, want ErrTooFewSamples", err)
			}
			if got.PValue != 1 || got.Reject || got.CI != unbounded {
				t.Errorf("result before enough samples = %+v, want neutral", got)
			}
		})
	}
}

func TestSuperiorityMonitorScoresPairsWithinALook(t *testing.T) {
	m, err := NewSuperiorityMonitor(SequentialOptions{Tau: 0.1})
	if err != nil {
		t.Fatal(err)
	}
	// Pairs (5,1) win, (2,2) tie, (1,3) loss, (9,0) win; stable's 5th value is unused.
	got, err := m.Look([]float64{5, 2, 1, 9}, []float64{1, 2, 3, 0, 100})
	if err != nil {
		t.Fatal(err)
	}
	if got.Estimate != 2.5/4 {
		t.Errorf("estimate = %v, want %v", got.Estimate, 2.5/4)
	}
	if got.NCanary != 4 || got.NStable != 5 {
		t.Errorf("counts = %d/%d, want 4/5", got.NCanary, got.NStable)
	}
	if got.CI.Lo < 0 || got.CI.Hi > 1 {
		t.Errorf("interval %v leaves [0,1]", got.CI)
	}
}

func TestProportionMSPRTCountsEqualValues(t *testing.T) {
	a, _ := NewProportionMSPRT(SequentialOptions{Tau: 0.05})
	b, _ := NewProportionMSPRT(SequentialOptions{Tau: 0.05})
	canary := make([]float64, 150)
	stable := make([]float64, 1350)
	for i := range 20 {
		canary[i] = 1
	}
	for i := range 40 {
		stable[i] = 1
	}
	ra, errA := a.Look(canary, stable)
	rb, errB := b.LookCounts(20, 150, 40, 1350)
	if errA != nil || errB != nil {
		t.Fatal(errA, errB)
	}
	if ra != rb {
		t.Errorf("Look %+v != LookCounts %+v", ra, rb)
	}
	if !ra.Reject || !ra.CI.Contains(20.0/150-40.0/1350) {
		t.Errorf("13%% vs 3%% on 150 canary requests: %+v, want rejection with the estimate inside the interval", ra)
	}
}

func TestMeanMSPRTSummariesEqualRawValues(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	a, _ := NewMeanMSPRT(SequentialOptions{Tau: 10})
	b, _ := NewMeanMSPRT(SequentialOptions{Tau: 10})
	for range 3 {
		var c, s []float64
		var sumC, sqC float64
		for range 80 {
			x := 100 + 10*r.NormFloat64()
			c = append(c, x)
			sumC += x
			sqC += x * x
		}
		for range 200 {
			s = append(s, 100+10*r.NormFloat64())
		}
		ra, _ := a.Look(c, s)
		rb, _ := b.LookSummary(SummaryFromSums(len(c), sumC, sqC), Summarize(s))
		if !near(ra.PValue, rb.PValue, 1e-6) || !near(ra.Estimate, rb.Estimate, 1e-9) {
			t.Errorf("raw %+v, summaries %+v", ra, rb)
		}
	}
}

func TestSequentialOptionsRejectInvalidValues(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts SequentialOptions
	}{
		{"missing tau", SequentialOptions{}},
		{"negative tau", SequentialOptions{Tau: -1}},
		{"alpha of one", SequentialOptions{Tau: 1, Alpha: 1}},
		{"min samples of one", SequentialOptions{Tau: 1, MinSamples: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewMeanMSPRT(tc.opts); !errors.Is(err, ErrInvalidParameter) {
				t.Errorf("mean: err = %v, want ErrInvalidParameter", err)
			}
			if _, err := NewProportionMSPRT(tc.opts); !errors.Is(err, ErrInvalidParameter) {
				t.Errorf("proportion: err = %v, want ErrInvalidParameter", err)
			}
		})
	}
}
