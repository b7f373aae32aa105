package xds

import (
	"math"
	"sort"
)

// Envoy sends a request to the cluster whose part of [0, TotalWeight) holds
// bucket % TotalWeight, walking the route's weighted clusters in order.
// With one canary the order is stable, then the canary: the canary's users
// are the top of the range and a canary that grows only takes users from
// stable. With several canaries stacked one after the other, a change of
// one canary's weight, or its drop, shifts the ranges of those listed
// after it and moves their users between arms mid-experiment. So while
// several canaries share the traffic, each holds a lane: a fixed part of
// the range whose top its users fill, stable taking the rest of it. An
// arm's users then change only when its own weight does.

// Lane is one canary's fixed part [From, To) of the bucket range while
// several canaries share the traffic. The canary serves the top of it,
// as many positions as its weight in basis points; stable serves the rest.
type Lane struct {
	Version string `json:"version"`
	From    uint32 `json:"from"`
	To      uint32 `json:"to"`
}

// Segment is a contiguous part [From, To) of the bucket range served by
// one version.
type Segment struct {
	Version string
	From    uint32
	To      uint32
}

// Layout returns the parts of the bucket range each version serves, in the
// order Envoy walks them (lowest first); together they cover [0,
// TotalWeight). Without lanes it is every version in Ordered order, a
// version without weight included with an empty part; with lanes, stable's
// parts are as many as the lanes leave apart and only versions with a
// weight appear. Lanes that do not hold for m's weights (see lanesHold)
// are ignored.
func (m *Model) Layout() []Segment {
	if !m.lanesHold(m.Lanes) {
		vs, bps := m.Ordered(), m.BasisPoints()
		out := make([]Segment, len(vs))
		var at uint32
		for i, v := range vs {
			out[i] = Segment{Version: v.Name, From: at, To: at + bps[i]}
			at += bps[i]
		}
		return out
	}
	lanes := append([]Lane(nil), m.Lanes...)
	sort.Slice(lanes, func(i, j int) bool { return lanes[i].From < lanes[j].From })
	var out []Segment
	add := func(v string, from, to uint32) {
		if to <= from {
			return
		}
		if n := len(out); n > 0 && out[n-1].Version == v && out[n-1].To == from {
			out[n-1].To = to
			return
		}
		out = append(out, Segment{Version: v, From: from, To: to})
	}
	var at uint32
	for _, l := range lanes {
		w := m.bps(l.Version)
		add(m.Stable, at, l.To-w)
		add(l.Version, l.To-w, l.To)
		at = l.To
	}
	add(m.Stable, at, TotalWeight)
	return out
}

// bps returns version's weight in basis points (see BasisPoints).
func (m *Model) bps(version string) uint32 {
	return uint32(math.Round(m.Weights[version] * 100))
}

// canaries returns the versions other than stable with a weight, in
// Ordered order.
func (m *Model) canaries() []string {
	var out []string
	for _, v := range m.Ordered() {
		if v.Name != m.Stable && m.Weights[v.Name] > 0 {
			out = append(out, v.Name)
		}
	}
	return out
}

// lanesHold reports whether lanes can lay out m's weights: there are
// lanes, they lie apart inside the range, none is stable's, and every
// canary with a weight has one at least as wide as its weight.
func (m *Model) lanesHold(lanes []Lane) bool {
	if len(lanes) == 0 {
		return false
	}
	width := make(map[string]uint32, len(lanes))
	sorted := append([]Lane(nil), lanes...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].From < sorted[j].From })
	var at uint32
	for _, l := range sorted {
		if l.Version == m.Stable || l.From < at || l.To <= l.From || l.To > TotalWeight {
			return false
		}
		if _, dup := width[l.Version]; dup {
			return false
		}
		width[l.Version] = l.To - l.From
		at = l.To
	}
	for _, v := range m.canaries() {
		if w, ok := width[v]; !ok || m.bps(v) > w {
			return false
		}
	}
	return true
}

// nextLanes returns m's lanes after a change, given those before it
// (prev): they are kept while they hold, so a canary dropped to 0 keeps
// its lane and no other arm's users move. Otherwise, with two canaries or
// more, new lanes split the range among them in proportion to their
// weights, the first canary in Ordered order at the top (where a single
// canary's users are, so a rollout that becomes an experiment keeps its
// canary's users); with fewer, there are none.
func (m *Model) nextLanes(prev []Lane) []Lane {
	cs := m.canaries()
	if len(cs) > 0 && m.lanesHold(prev) {
		return append([]Lane(nil), prev...)
	}
	if len(cs) < 2 {
		return nil
	}
	var total uint32
	for _, v := range cs {
		total += m.bps(v)
	}
	lanes := make([]Lane, len(cs))
	to := uint32(TotalWeight)
	for i, v := range cs {
		// At least the canary's weight, since total ≤ TotalWeight.
		width := uint32(uint64(m.bps(v)) * TotalWeight / uint64(total))
		lanes[i] = Lane{Version: v, From: to - width, To: to}
		to -= width
	}
	return lanes
}

// assignLanes sets every model's lanes after a change from cur: lanes are
// the control plane's to keep, whatever a change's input said of them.
func (s *State) assignLanes(cur *State) {
	for n, m := range s.Models {
		m.Lanes = m.lanesAfter(cur.Models[n])
	}
}

// lanesAfter returns m's lanes when it follows old (nil: a new model):
// old's lanes carry over while the stable version stays.
func (m *Model) lanesAfter(old *Model) []Lane {
	var prev []Lane
	if old != nil && old.Stable == m.Stable {
		prev = old.lanesNow()
	}
	return m.nextLanes(prev)
}

// lanesNow returns m's lanes, or, for canaries stacked without them (a
// state written before lanes existed), each canary's part of the range as
// its lane: the first change then keeps every arm where it is.
func (m *Model) lanesNow() []Lane {
	if len(m.Lanes) > 0 || len(m.canaries()) < 2 {
		return m.Lanes
	}
	var out []Lane
	for _, seg := range m.Layout() {
		if seg.Version != m.Stable && seg.To > seg.From {
			out = append(out, Lane{Version: seg.Version, From: seg.From, To: seg.To})
		}
	}
	return out
}

// Reweighted returns m as the control plane would make it with weights
// (stable unchanged): its lanes follow as for a change through the API.
func Reweighted(m *Model, weights map[string]float64) *Model {
	c := m.clone()
	c.Weights = make(map[string]float64, len(weights))
	for k, w := range weights {
		c.Weights[k] = w
	}
	c.Lanes = c.lanesAfter(m)
	return c
}

// UsersMoved returns, for each version that serves users both before and
// after, the share of its users before that after is served by another
// version. A version missing from the result keeps all of its users.
func UsersMoved(before, after *Model) map[string]float64 {
	b, a := before.Layout(), after.Layout()
	out := map[string]float64{}
	served := map[string]uint32{}
	stay := map[string]uint32{}
	for _, s := range b {
		served[s.Version] += s.To - s.From
		for _, t := range a {
			if t.Version != s.Version {
				continue
			}
			if lo, hi := max(s.From, t.From), min(s.To, t.To); hi > lo {
				stay[s.Version] += hi - lo
			}
		}
	}
	for v, n := range served {
		if n == 0 || after.bps(v) == 0 {
			continue
		}
		if moved := float64(n-stay[v]) / float64(n); moved > 0 {
			out[v] = moved
		}
	}
	return out
}
