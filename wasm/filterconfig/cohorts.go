package filterconfig

import (
	"errors"
	"strconv"
)

// Members names users by rule rather than by bucket: by identity (as the
// filter resolves it from the identity sources), by the value of the
// cohort header a trusted hop sets (e.g. "internal"), or by the value of
// the tenant header. A request belongs when any one of them matches.
type Members struct {
	Identities []string `json:"identities,omitempty"`
	Cohorts    []string `json:"cohorts,omitempty"`
	Tenants    []string `json:"tenants,omitempty"`
}

// Empty reports whether m names no one.
func (m Members) Empty() bool {
	return len(m.Identities) == 0 && len(m.Cohorts) == 0 && len(m.Tenants) == 0
}

// ModelCohorts are one model's cohorts: OptIn is routed to the canary at
// any canary weight above 0, Excluded never to a canary (exclusion wins
// over opt-in).
type ModelCohorts struct {
	Model    string  `json:"model"`
	OptIn    Members `json:"opt_in"`
	Excluded Members `json:"excluded"`
}

// MaxCohortMembers bounds the entries of one model's cohorts: they travel
// in the filter's configuration to every Envoy.
const MaxCohortMembers = 10000

// Validate reports every problem of one model's cohorts: empty or
// repeated entries, an entry both opted in and excluded, and more than
// MaxCohortMembers entries.
func (c ModelCohorts) Validate() error {
	var errs []error
	n := 0
	kinds := []struct {
		name            string
		optIn, excluded []string
	}{
		{"identities", c.OptIn.Identities, c.Excluded.Identities},
		{"cohorts", c.OptIn.Cohorts, c.Excluded.Cohorts},
		{"tenants", c.OptIn.Tenants, c.Excluded.Tenants},
	}
	for _, k := range kinds {
		var in map[string]bool
		for _, l := range [...]struct {
			name string
			vs   []string
		}{{"opt_in", k.optIn}, {"excluded", k.excluded}} {
			list, vs := l.name, l.vs
			seen := map[string]bool{}
			for i, v := range vs {
				switch {
				case v == "":
					errs = append(errs, errors.New(list+"."+k.name+"["+strconv.Itoa(i)+"]: empty"))
				case seen[v]:
					errs = append(errs, errors.New(list+"."+k.name+": "+strconv.Quote(v)+" listed twice"))
				}
				seen[v] = true
			}
			n += len(vs)
			if list == "opt_in" {
				in = seen
			}
		}
		for _, v := range k.excluded {
			if in[v] && v != "" {
				errs = append(errs, errors.New(k.name+": "+strconv.Quote(v)+" is both opted in and excluded"))
			}
		}
	}
	if n > MaxCohortMembers {
		errs = append(errs, errors.New("cohorts list "+strconv.Itoa(n)+" entries; at most "+strconv.Itoa(MaxCohortMembers)))
	}
	return errors.Join(errs...)
}
