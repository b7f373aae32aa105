package xds

import (
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/wasm/filterconfig"
)

// CohortMembers names users by identity, by the cohort a trusted hop
// names in x-llmcanary-cohort, or by tenant.
type CohortMembers = filterconfig.Members

// Cohorts are a model's users whose version a rule decides rather than
// their bucket. OptIn members (internal staff, beta testers) are sent to
// the canary at any canary weight above 0; Excluded members (a tenant
// under contract, a customer who asked) are never sent to a canary, and
// exclusion wins over opt-in. The wasm filter recognises them and marks
// the request (wire.HeaderAssigned); a route per rule sends it on. Their
// requests are labelled and left out of the comparison: they are not
// randomised.
type Cohorts struct {
	OptIn    CohortMembers `json:"opt_in,omitzero"`
	Excluded CohortMembers `json:"excluded,omitzero"`
}

func (c *Cohorts) validate() error {
	if c == nil {
		return nil
	}
	return filterconfig.ModelCohorts{OptIn: c.OptIn, Excluded: c.Excluded}.Validate()
}

func (c *Cohorts) clone() *Cohorts {
	if c == nil {
		return nil
	}
	cp := func(m CohortMembers) CohortMembers {
		return CohortMembers{
			Identities: append([]string(nil), m.Identities...),
			Cohorts:    append([]string(nil), m.Cohorts...),
			Tenants:    append([]string(nil), m.Tenants...),
		}
	}
	return &Cohorts{OptIn: cp(c.OptIn), Excluded: cp(c.Excluded)}
}

// filterCohorts returns the cohorts of every model that has any, in model
// order, as the wasm filter's configuration lists them.
func (s *State) filterCohorts() []filterconfig.ModelCohorts {
	var out []filterconfig.ModelCohorts
	for _, n := range s.ModelNames() {
		c := s.Models[n].Cohorts
		if c == nil || (c.OptIn.Empty() && c.Excluded.Empty()) {
			continue
		}
		out = append(out, filterconfig.ModelCohorts{Model: n, OptIn: c.OptIn, Excluded: c.Excluded})
	}
	return out
}

// OptInCanary returns the version an opt-in user is sent to: the first
// canary, in route order, with a weight above 0; false when no canary has
// traffic (opt-in users then follow their bucket like everyone else).
func (m *Model) OptInCanary() (string, bool) {
	for _, v := range m.Ordered() {
		if v.Name != m.Stable && m.Weights[v.Name] > 0 {
			return v.Name, true
		}
	}
	return "", false
}

// excludedRoute sends the model's excluded users to stable, whatever the
// weights; nil when the model excludes no one.
func excludedRoute(m *Model, modelHdr *routev3.HeaderMatcher) *routev3.Route {
	if m.Cohorts == nil || m.Cohorts.Excluded.Empty() {
		return nil
	}
	return versionRoute(m, m.Stable, "cohort:"+wire.AssignedExcluded, modelHdr, exactHeader(wire.HeaderAssigned, wire.AssignedExcluded))
}

// optInRoute sends the model's opt-in users to the canary that has
// traffic; nil when no one opts in or no canary has traffic.
func optInRoute(m *Model, modelHdr *routev3.HeaderMatcher) *routev3.Route {
	if m.Cohorts == nil || m.Cohorts.OptIn.Empty() {
		return nil
	}
	canary, ok := m.OptInCanary()
	if !ok {
		return nil
	}
	return versionRoute(m, canary, "cohort:"+wire.AssignedOptIn, modelHdr, exactHeader(wire.HeaderAssigned, wire.AssignedOptIn))
}
