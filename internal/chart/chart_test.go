package chart

import (
	"bytes"
	"encoding/xml"
	"errors"
	"strings"
	"testing"
)

func TestChartIsWellFormedSVGWithEverySeriesBandMarkAndRule(t *testing.T) {
	c := Chart{
		Title: "canary weight <over> time", XLabel: "seconds", YLabel: "%",
		Series: []Series{{Name: "v2", X: []float64{0, 10, 20}, Y: []float64{2, 5, 0}, Step: true}, CDF("ttft", []float64{3, 1, 2})},
		Bands:  []Band{{Name: "interval", X: []float64{0, 10, 20}, Lo: []float64{1, 2, -1}, Hi: []float64{3, 6, 1}}},
		Marks:  []Mark{{X: 20, Label: "rollback: error_rate"}},
		Rules:  []Rule{{Y: 4, Label: "tolerance"}},
	}
	var buf bytes.Buffer
	if err := c.WriteSVG(&buf); err != nil {
		t.Fatal(err)
	}
	if err := xml.Unmarshal(buf.Bytes(), new(struct{})); err != nil {
		t.Fatalf("not well-formed XML: %v", err)
	}
	for _, want := range []string{"canary weight &lt;over&gt; time", ">v2<", ">ttft<", ">interval<", "rollback: error_rate", "tolerance", "Liberation Sans"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("SVG lacks %q", want)
		}
	}
	inline, err := c.SVG()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(inline, "<svg ") || strings.Contains(inline, "<?xml") {
		t.Fatalf("inline SVG starts %.80q", inline)
	}
}

func TestChartWithoutDataSaysSo(t *testing.T) {
	if err := (Chart{Title: "empty"}).WriteSVG(&bytes.Buffer{}); !errors.Is(err, ErrEmpty) {
		t.Fatalf("err %v, want ErrEmpty", err)
	}
	if err := (Chart{Series: []Series{{Name: "bad", X: []float64{1}, Y: nil}}}).WriteSVG(&bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "bad") {
		t.Fatalf("mismatched series: %v", err)
	}
}

func TestCDFEndsAtOneHundredPercentOnTheLargestValue(t *testing.T) {
	s := CDF("x", []float64{5, 1, 9, 3})
	if s.X[0] != 1 || s.X[len(s.X)-1] != 9 || s.Y[len(s.Y)-1] != 100 {
		t.Fatalf("cdf %v %v", s.X, s.Y)
	}
}
