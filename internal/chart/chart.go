// Package chart draws the pictures llmcanary shows people — weight over
// time, effects with their intervals, latency distributions — as SVG,
// with gonum/plot. A chart is plain data (Chart); WriteSVG renders it as
// a standalone file and SVG as an element to inline in an HTML page.
package chart

import (
	"bytes"
	"errors"
	"fmt"
	"image/color"
	"io"
	"math"
	"sort"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Series is one line.
type Series struct {
	Name string
	X, Y []float64
	// Step draws the line as a staircase (weights change in steps).
	Step bool
}

// Band is a shaded range around a line: an interval over time.
type Band struct {
	Name      string
	X, Lo, Hi []float64
}

// Mark is a labelled vertical line (a decision).
type Mark struct {
	X     float64
	Label string
}

// Rule is a labelled horizontal line (zero, a tolerance).
type Rule struct {
	Y     float64
	Label string
}

// Chart is a line chart.
type Chart struct {
	Title          string
	XLabel, YLabel string
	Series         []Series
	Bands          []Band
	Marks          []Mark
	Rules          []Rule
	// YMin and YMax fix the y range when YMax > YMin.
	YMin, YMax float64
	// Width and Height default to 720×300 points.
	Width, Height vg.Length
	// The legend sits top right unless these move it.
	LegendBottom, LegendLeft bool
}

// Palette is the series' colours, in order (bands take their series'
// colour, lighter).
var Palette = []color.RGBA{
	{0x1f, 0x77, 0xb4, 0xff}, {0xd6, 0x27, 0x28, 0xff}, {0x2c, 0xa0, 0x2c, 0xff},
	{0xff, 0x7f, 0x0e, 0xff}, {0x94, 0x67, 0xbd, 0xff}, {0x8c, 0x56, 0x4b, 0xff},
}

var sans = font.Font{Typeface: "Liberation", Variant: "Sans"}

func init() {
	// Sans-serif text everywhere: the browser shows the SVG's text with
	// its own fonts (none is embedded), and sans reads best small.
	plot.DefaultFont = sans
	plotter.DefaultFont = sans
}

// ErrEmpty is returned for a chart without any data to draw.
var ErrEmpty = errors.New("chart: nothing to draw")

func (c Chart) plot() (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = c.Title
	p.Title.TextStyle.Font.Size = vg.Points(13)
	p.X.Label.Text, p.Y.Label.Text = c.XLabel, c.YLabel
	p.Legend.Top, p.Legend.Left = !c.LegendBottom, c.LegendLeft
	p.Legend.TextStyle.Font.Size = vg.Points(9)
	p.Add(plotter.NewGrid())

	ymin, ymax := math.Inf(1), math.Inf(-1)
	xmin, xmax := math.Inf(1), math.Inf(-1)
	see := func(x, y float64) {
		if !finite(x) || !finite(y) {
			return
		}
		xmin, xmax = math.Min(xmin, x), math.Max(xmax, x)
		ymin, ymax = math.Min(ymin, y), math.Max(ymax, y)
	}
	for i, b := range c.Bands {
		var pts plotter.XYs
		for j := range b.X {
			if finite(b.X[j]) && finite(b.Hi[j]) {
				pts = append(pts, plotter.XY{X: b.X[j], Y: b.Hi[j]})
				see(b.X[j], b.Hi[j])
			}
		}
		for j := len(b.X) - 1; j >= 0; j-- {
			if finite(b.X[j]) && finite(b.Lo[j]) {
				pts = append(pts, plotter.XY{X: b.X[j], Y: b.Lo[j]})
				see(b.X[j], b.Lo[j])
			}
		}
		if len(pts) < 3 {
			continue
		}
		poly, err := plotter.NewPolygon(pts)
		if err != nil {
			return nil, fmt.Errorf("chart: band %s: %w", b.Name, err)
		}
		col := Palette[i%len(Palette)]
		poly.Color, poly.LineStyle.Width = color.NRGBA{col.R, col.G, col.B, 0x40}, 0
		p.Add(poly)
		if b.Name != "" {
			p.Legend.Add(b.Name, poly)
		}
	}
	for i, s := range c.Series {
		if len(s.X) != len(s.Y) {
			return nil, fmt.Errorf("chart: series %s has %d x and %d y", s.Name, len(s.X), len(s.Y))
		}
		pts := make(plotter.XYs, 0, len(s.X))
		for j := range s.X {
			if finite(s.X[j]) && finite(s.Y[j]) {
				pts = append(pts, plotter.XY{X: s.X[j], Y: s.Y[j]})
				see(s.X[j], s.Y[j])
			}
		}
		if len(pts) == 0 {
			continue
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			return nil, fmt.Errorf("chart: series %s: %w", s.Name, err)
		}
		l.Color, l.Width = Palette[i%len(Palette)], vg.Points(1.8)
		if s.Step {
			l.StepStyle = plotter.PostStep
		}
		p.Add(l)
		p.Legend.Add(s.Name, l)
	}
	for _, m := range c.Marks {
		xmin, xmax = math.Min(xmin, m.X), math.Max(xmax, m.X)
	}
	for _, r := range c.Rules {
		ymin, ymax = math.Min(ymin, r.Y), math.Max(ymax, r.Y)
	}
	if math.IsInf(xmin, 0) {
		return nil, ErrEmpty
	}
	if c.YMax > c.YMin {
		ymin, ymax = c.YMin, c.YMax
	}
	if ymax == ymin {
		ymin, ymax = ymin-1, ymax+1
	}
	if xmax == xmin {
		xmax = xmin + 1
	}
	p.X.Min, p.X.Max, p.Y.Min, p.Y.Max = xmin, xmax, ymin, ymax

	grey := color.RGBA{0x66, 0x66, 0x66, 0xff}
	var labels, vertical plotter.XYLabels
	for _, r := range c.Rules {
		l, _ := plotter.NewLine(plotter.XYs{{X: xmin, Y: r.Y}, {X: xmax, Y: r.Y}})
		l.Color, l.Dashes = grey, []vg.Length{vg.Points(2), vg.Points(2)}
		p.Add(l)
		if r.Label != "" {
			labels.XYs = append(labels.XYs, plotter.XY{X: xmin, Y: r.Y})
			labels.Labels = append(labels.Labels, " "+r.Label)
		}
	}
	for _, m := range c.Marks {
		l, _ := plotter.NewLine(plotter.XYs{{X: m.X, Y: ymin}, {X: m.X, Y: ymax}})
		l.Color, l.Dashes = grey, []vg.Length{vg.Points(4), vg.Points(3)}
		p.Add(l)
		if m.Label != "" {
			// Up the line from its foot, clear of the legend.
			vertical.XYs = append(vertical.XYs, plotter.XY{X: m.X, Y: ymin})
			vertical.Labels = append(vertical.Labels, " "+m.Label)
		}
	}
	for _, set := range []struct {
		l       plotter.XYLabels
		rotated bool
	}{{labels, false}, {vertical, true}} {
		if len(set.l.XYs) == 0 {
			continue
		}
		lb, err := plotter.NewLabels(set.l)
		if err != nil {
			return nil, fmt.Errorf("chart: labels: %w", err)
		}
		for i := range lb.TextStyle {
			ts := &lb.TextStyle[i]
			ts.Font.Size, ts.Color = vg.Points(8), grey
			if set.rotated {
				ts.Rotation, ts.XAlign, ts.YAlign = math.Pi/2, draw.XLeft, draw.YBottom
			} else {
				ts.YAlign = draw.YTop
			}
		}
		p.Add(lb)
	}
	return p, nil
}

func (c Chart) size() (vg.Length, vg.Length) {
	w, h := c.Width, c.Height
	if w <= 0 {
		w = 720
	}
	if h <= 0 {
		h = 300
	}
	return w, h
}

// WriteSVG renders the chart as a standalone SVG file.
func (c Chart) WriteSVG(w io.Writer) error {
	p, err := c.plot()
	if err != nil {
		return err
	}
	width, height := c.size()
	wt, err := p.WriterTo(width, height, "svg")
	if err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	_, err = wt.WriteTo(w)
	return err
}

// SVG renders the chart as an <svg> element to inline in an HTML page
// (no XML prolog), scaled to its container's width.
func (c Chart) SVG() (string, error) {
	var b bytes.Buffer
	if err := c.WriteSVG(&b); err != nil {
		return "", err
	}
	s := b.String()
	i := strings.Index(s, "<svg")
	if i < 0 {
		return "", errors.New("chart: renderer wrote no <svg> element")
	}
	s = s[i:]
	// Scale with the page: the viewBox keeps the drawing's proportions.
	s = strings.Replace(s, "<svg ", `<svg style="max-width:100%;height:auto" `, 1)
	return s, nil
}

// CDF returns the empirical distribution of values as a series: x the value,
// y the share of values at or below it, in percent.
func CDF(name string, values []float64) Series {
	s := append([]float64(nil), values...)
	sort.Float64s(s)
	out := Series{Name: name}
	step := max(1, len(s)/400)
	for i := 0; i < len(s); i += step {
		out.X = append(out.X, s[i])
		out.Y = append(out.Y, 100*float64(i+1)/float64(len(s)))
	}
	if n := len(s); n > 0 && out.X[len(out.X)-1] != s[n-1] {
		out.X = append(out.X, s[n-1])
		out.Y = append(out.Y, 100)
	}
	return out
}

// Quantiles returns a distribution given by its quantiles as a series:
// x the value at each level, y the level in percent.
func Quantiles(name string, levels, values []float64) Series {
	out := Series{Name: name}
	for i := range levels {
		if i < len(values) {
			out.X = append(out.X, values[i])
			out.Y = append(out.Y, 100*levels[i])
		}
	}
	return out
}

func finite(v float64) bool { return !math.IsInf(v, 0) && !math.IsNaN(v) }
