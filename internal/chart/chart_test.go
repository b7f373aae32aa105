package chart

import (
	"bytes"
	"encoding/xml"
	"strings"
	"testing"
)

func TestChartIsWellFormedSVGWithEverySeriesAndMark(t *testing.T) {
	c := Chart{
		Title: "canary weight <over> time", XLabel: "seconds", YLabel: "%",
		Series: []Series{{Name: "v2", X: []float64{0, 10, 20}, Y: []float64{2, 5, 0}, Step: true}, CDF("ttft", []float64{3, 1, 2})},
		Marks:  []Mark{{X: 20, Label: "rollback: error_rate"}},
	}
	var buf bytes.Buffer
	if err := c.WriteSVG(&buf); err != nil {
		t.Fatal(err)
	}
	if err := xml.Unmarshal(buf.Bytes(), new(struct{})); err != nil {
		t.Fatalf("not well-formed XML: %v", err)
	}
	for _, want := range []string{"canary weight &lt;over&gt; time", ">v2<", ">ttft<", "rollback: error_rate"} {
		if !strings.Contains(buf.String(), want) {
			t.Fatalf("SVG lacks %q", want)
		}
	}
	if n := strings.Count(buf.String(), "<polyline"); n != 2 {
		t.Fatalf("%d lines drawn, want 2", n)
	}
}

func TestCDFEndsAtOneHundredPercentOnTheLargestValue(t *testing.T) {
	s := CDF("x", []float64{5, 1, 9, 3})
	if s.X[0] != 1 || s.X[len(s.X)-1] != 9 || s.Y[len(s.Y)-1] != 100 {
		t.Fatalf("cdf %v %v", s.X, s.Y)
	}
}
