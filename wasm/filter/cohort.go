package filter

import (
	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/wasm/filterconfig"
)

// memberSet is filterconfig.Members as sets.
type memberSet struct{ identities, cohorts, tenants map[string]bool }

func newMemberSet(m filterconfig.Members) memberSet {
	set := func(vs []string) map[string]bool {
		out := make(map[string]bool, len(vs))
		for _, v := range vs {
			out[v] = true
		}
		return out
	}
	return memberSet{set(m.Identities), set(m.Cohorts), set(m.Tenants)}
}

// has reports whether a request with this identity, cohort and tenant
// (each "" when the request has none) is a member.
func (s memberSet) has(identity, cohort, tenant string) bool {
	return (identity != "" && s.identities[identity]) ||
		(cohort != "" && s.cohorts[cohort]) ||
		(tenant != "" && s.tenants[tenant])
}

// modelCohorts are one model's cohorts as sets.
type modelCohorts struct{ optIn, excluded memberSet }

// of returns the rule that decides a request's version, or "" when its
// bucket does: wire.AssignedExcluded for an excluded member (exclusion
// wins), wire.AssignedOptIn for an opt-in member. identity is the resolved
// identity, cohort the trusted cohort header's value and tenant the tenant
// header's ("" for absent).
func (c modelCohorts) of(identity, cohort, tenant string) string {
	switch {
	case c.excluded.has(identity, cohort, tenant):
		return wire.AssignedExcluded
	case c.optIn.has(identity, cohort, tenant):
		return wire.AssignedOptIn
	}
	return ""
}
