package stats

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"
)

// The fixtures in testdata/*.json are written by testdata/gen_fixtures.py
// from SciPy, statsmodels, brute-force enumeration and R's published outputs.

func loadCases[T any](t *testing.T, name string) []T {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatalf("read fixture: %v (regenerate with testdata/gen_fixtures.py)", err)
	}
	var doc struct {
		Cases []T `json:"cases"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("decode %s: %v", name, err)
	}
	if len(doc.Cases) == 0 {
		t.Fatalf("%s has no cases", name)
	}
	return doc.Cases
}

// near reports whether got is within rel relative (or 1e-300 absolute) of want.
func near(got, want, rel float64) bool {
	if got == want {
		return true
	}
	return math.Abs(got-want) <= rel*math.Max(math.Abs(want), 1e-300)
}

func parseAlt(t *testing.T, s string) Alternative {
	t.Helper()
	switch s {
	case "two-sided":
		return TwoSided
	case "greater":
		return Greater
	case "less":
		return Less
	}
	t.Fatalf("unknown alternative %q", s)
	return 0
}

func TestMannWhitneyMatchesSciPy(t *testing.T) {
	type mwCase struct {
		Name        string    `json:"name"`
		Canary      []float64 `json:"canary"`
		Stable      []float64 `json:"stable"`
		Alternative string    `json:"alternative"`
		Method      string    `json:"method"`
		U           float64   `json:"u"`
		PValue      float64   `json:"p_value"`
		Tolerance   float64   `json:"tolerance"`
	}
	methods := map[string]MWMethod{"auto": MWAuto, "exact": MWExact, "asymptotic": MWAsymptotic}
	for _, tc := range loadCases[mwCase](t, "mannwhitney.json") {
		t.Run(tc.Name, func(t *testing.T) {
			got, err := MannWhitney(tc.Canary, tc.Stable, parseAlt(t, tc.Alternative), methods[tc.Method])
			if err != nil {
				t.Fatal(err)
			}
			if got.U != tc.U {
				t.Errorf("U = %v, want %v", got.U, tc.U)
			}
			if tc.Tolerance > 0 {
				if math.Abs(got.PValue-tc.PValue) > tc.Tolerance {
					t.Errorf("p = %v, want %v ± %v", got.PValue, tc.PValue, tc.Tolerance)
				}
			} else if !near(got.PValue, tc.PValue, 1e-9) {
				t.Errorf("p = %.15g, want %.15g", got.PValue, tc.PValue)
			}
			if wantExact := tc.Method == "exact" || tc.Method == "auto"; got.Exact != wantExact {
				t.Errorf("exact = %v, want %v", got.Exact, wantExact)
			}
		})
	}
}

func TestHodgesLehmannMatchesBruteForce(t *testing.T) {
	type hlCase struct {
		Name   string    `json:"name"`
		Canary []float64 `json:"canary"`
		Stable []float64 `json:"stable"`
		Conf   float64   `json:"conf"`
		Shift  float64   `json:"shift"`
		Lo     float64   `json:"lo"`
		Hi     float64   `json:"hi"`
		Exact  bool      `json:"exact"`
	}
	for _, tc := range loadCases[hlCase](t, "hodges_lehmann.json") {
		t.Run(tc.Name, func(t *testing.T) {
			got, err := HodgesLehmann(tc.Canary, tc.Stable, tc.Conf)
			if err != nil {
				t.Fatal(err)
			}
			if !near(got.Shift, tc.Shift, 1e-12) || !near(got.CI.Lo, tc.Lo, 1e-12) || !near(got.CI.Hi, tc.Hi, 1e-12) {
				t.Errorf("got shift %v [%v, %v], want %v [%v, %v]", got.Shift, got.CI.Lo, got.CI.Hi, tc.Shift, tc.Lo, tc.Hi)
			}
			if got.Exact != tc.Exact {
				t.Errorf("exact = %v, want %v", got.Exact, tc.Exact)
			}
		})
	}
}

func TestRatesMatchSciPyAndStatsmodels(t *testing.T) {
	type rateCase map[string]any
	num := func(c rateCase, k string) (float64, bool) {
		v, ok := c[k].(float64)
		return v, ok
	}
	pair := func(t *testing.T, c rateCase, k string) Interval {
		t.Helper()
		v, ok := c[k].([]any)
		if !ok || len(v) != 2 {
			t.Fatalf("fixture field %s missing", k)
		}
		return Interval{Lo: v[0].(float64), Hi: v[1].(float64)}
	}
	for _, c := range loadCases[rateCase](t, "rates.json") {
		a, n1 := int(c["canary_events"].(float64)), int(c["canary_n"].(float64))
		x, n2 := int(c["stable_events"].(float64)), int(c["stable_n"].(float64))
		t.Run(c["name"].(string), func(t *testing.T) {
			for _, alt := range []Alternative{TwoSided, Greater, Less} {
				f, err := FisherExact(a, n1, x, n2, alt)
				if err != nil {
					t.Fatal(err)
				}
				if want, _ := num(c, "fisher_"+alt.String()); !near(f.PValue, want, 1e-9) {
					t.Errorf("fisher %s p = %.15g, want %.15g", alt, f.PValue, want)
				}
				if want, ok := c["odds_ratio"].(float64); ok && !near(f.OddsRatio, want, 1e-12) {
					t.Errorf("odds ratio = %v, want %v", f.OddsRatio, want)
				}
				want, ok := num(c, "z_"+alt.String())
				if !ok {
					continue
				}
				z, err := TwoProportionZTest(a, n1, x, n2, alt)
				if err != nil {
					t.Fatal(err)
				}
				if !near(z.PValue, want, 1e-9) {
					t.Errorf("z-test %s p = %.15g, want %.15g", alt, z.PValue, want)
				}
				if wz, _ := num(c, "z"); math.Abs(z.Z-wz) > 1e-12 {
					t.Errorf("z = %v, want %v", z.Z, wz)
				}
			}
			for _, conf := range []float64{0.95, 0.99} {
				w, err := Wilson(a, n1, conf)
				if err != nil {
					t.Fatal(err)
				}
				key := "wilson_canary_" + trimFloat(conf)
				if want := pair(t, c, key); math.Abs(w.Lo-want.Lo) > 1e-12 || math.Abs(w.Hi-want.Hi) > 1e-12 {
					t.Errorf("%s = %v, want %v", key, w, want)
				}
				nw, err := NewcombeDiff(a, n1, x, n2, conf)
				if err != nil {
					t.Fatal(err)
				}
				key = "newcombe_" + trimFloat(conf)
				if want := pair(t, c, key); math.Abs(nw.Lo-want.Lo) > 1e-12 || math.Abs(nw.Hi-want.Hi) > 1e-12 {
					t.Errorf("%s = %v, want %v", key, nw, want)
				}
			}
		})
	}
}

func trimFloat(f float64) string {
	b, _ := json.Marshal(f)
	return string(b)
}

func TestQuantileRatiosMatchNumPyOrderStatistics(t *testing.T) {
	type q struct {
		P        float64   `json:"p"`
		Canary   float64   `json:"canary"`
		Stable   float64   `json:"stable"`
		CanaryCI []float64 `json:"canary_ci"`
		StableCI []float64 `json:"stable_ci"`
		CI       []float64 `json:"ci"`
	}
	type qrCase struct {
		Name      string    `json:"name"`
		Canary    []float64 `json:"canary"`
		Stable    []float64 `json:"stable"`
		Conf      float64   `json:"conf"`
		Quantiles []q       `json:"quantiles"`
	}
	for _, tc := range loadCases[qrCase](t, "quantile.json") {
		t.Run(tc.Name, func(t *testing.T) {
			ps := make([]float64, len(tc.Quantiles))
			for i, w := range tc.Quantiles {
				ps[i] = w.P
			}
			got, err := QuantileRatios(tc.Canary, tc.Stable, ps, tc.Conf)
			if err != nil {
				t.Fatal(err)
			}
			for i, w := range tc.Quantiles {
				g := got[i]
				if !near(g.Canary, w.Canary, 1e-12) || !near(g.Stable, w.Stable, 1e-12) {
					t.Errorf("p%g: quantiles %v/%v, want %v/%v", 100*w.P, g.Canary, g.Stable, w.Canary, w.Stable)
				}
				if g.CanaryCI != (Interval{w.CanaryCI[0], w.CanaryCI[1]}) || g.StableCI != (Interval{w.StableCI[0], w.StableCI[1]}) {
					t.Errorf("p%g: group intervals %v %v, want %v %v", 100*w.P, g.CanaryCI, g.StableCI, w.CanaryCI, w.StableCI)
				}
				if !near(g.CI.Lo, w.CI[0], 1e-12) || !near(g.CI.Hi, w.CI[1], 1e-12) {
					t.Errorf("p%g: ratio interval %v, want %v", 100*w.P, g.CI, w.CI)
				}
			}
		})
	}
}

func TestPowerMatchesR(t *testing.T) {
	type powerCase struct {
		Kind       string   `json:"kind"`
		N          float64  `json:"n"`
		SD         float64  `json:"sd"`
		MDE        float64  `json:"mde"`
		Baseline   float64  `json:"baseline"`
		Alpha      float64  `json:"alpha"`
		Power      float64  `json:"power"`
		RPublished *float64 `json:"r_published"`
	}
	for _, tc := range loadCases[powerCase](t, "power.json") {
		var got, want float64
		var err error
		switch tc.Kind {
		case "means_n":
			got, err = SampleSizeMeans(tc.SD, tc.MDE, tc.Alpha, tc.Power)
			want = tc.N
		case "means_power":
			got, err = PowerMeans(tc.N, tc.SD, tc.MDE, tc.Alpha)
			want = tc.Power
		case "props_n":
			got, err = SampleSizeProportions(tc.Baseline, tc.MDE, tc.Alpha, tc.Power)
			want = tc.N
		case "props_power":
			got, err = PowerProportions(tc.N, tc.Baseline, tc.MDE, tc.Alpha)
			want = tc.Power
		default:
			t.Fatalf("unknown kind %q", tc.Kind)
		}
		name := tc.Kind
		t.Run(name, func(t *testing.T) {
			if err != nil {
				t.Fatal(err)
			}
			if !near(got, want, 1e-7) {
				t.Errorf("%s = %.10g, want %.10g (%+v)", tc.Kind, got, want, tc)
			}
			// R prints 7 significant digits and solves n with uniroot's
			// default tolerance, about 1e-4.
			if tc.RPublished != nil && math.Abs(got-*tc.RPublished) > 2e-4 {
				t.Errorf("%s = %.10g, R prints %v", tc.Kind, got, *tc.RPublished)
			}
		})
	}
}

func TestSampleRatioMismatchMatchesSciPy(t *testing.T) {
	type srmCase struct {
		Name      string    `json:"name"`
		Observed  []int     `json:"observed"`
		Weights   []float64 `json:"weights"`
		ChiSquare float64   `json:"chi_square"`
		PValue    float64   `json:"p_value"`
	}
	for _, tc := range loadCases[srmCase](t, "srm.json") {
		t.Run(tc.Name, func(t *testing.T) {
			got, err := SampleRatioMismatch(tc.Observed, tc.Weights, 0)
			if err != nil {
				t.Fatal(err)
			}
			if !near(got.ChiSquare, tc.ChiSquare, 1e-9) || !near(got.PValue, tc.PValue, 1e-9) {
				t.Errorf("chi2 %v p %v, want %v p %v", got.ChiSquare, got.PValue, tc.ChiSquare, tc.PValue)
			}
			if want := tc.PValue < DefaultSRMAlpha; got.Mismatch != want {
				t.Errorf("mismatch = %v, want %v", got.Mismatch, want)
			}
		})
	}
}

func TestAdjustMatchesStatsmodels(t *testing.T) {
	type mtCase struct {
		Name    string    `json:"name"`
		PValues []float64 `json:"p_values"`
		Holm    []float64 `json:"holm"`
		BH      []float64 `json:"fdr_bh"`
	}
	for _, tc := range loadCases[mtCase](t, "multiplicity.json") {
		t.Run(tc.Name, func(t *testing.T) {
			for method, want := range map[Correction][]float64{Holm: tc.Holm, BenjaminiHochberg: tc.BH} {
				got, err := Adjust(tc.PValues, method)
				if err != nil {
					t.Fatal(err)
				}
				for i := range want {
					if !near(got[i], want[i], 1e-12) {
						t.Errorf("%s: adjusted %v, want %v", method, got, want)
						break
					}
				}
			}
		})
	}
}
