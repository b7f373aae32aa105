package filter

import (
	"testing"

	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/wasm/filterconfig"
)

func cohortPlugin(t *testing.T, trusted bool) *Plugin {
	t.Helper()
	p, err := NewPlugin(filterconfig.Config{
		HashKey:   string(testKey),
		ForceKeys: []string{filterconfig.ForceKeyDigest("op-key")},
		Models:    []string{"m1", "m2"},
		Cohorts: []filterconfig.ModelCohorts{{
			Model:    "m1",
			OptIn:    filterconfig.Members{Identities: []string{"alice"}, Cohorts: []string{"internal"}},
			Excluded: filterconfig.Members{Identities: []string{"bob"}, Tenants: []string{"bank"}},
		}},
		CohortHeaderTrusted: trusted,
		TenantHeader:        "X-Tenant-ID",
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCohortAssignment(t *testing.T) {
	cases := []struct {
		name    string
		trusted bool
		headers [][2]string
		body    string
		want    string // wire.HeaderAssigned after the filter, "" = absent
	}{
		{"opt-in identity is assigned opt_in", false, [][2]string{{wire.HeaderUserID, "alice"}}, `{"model":"m1"}`, wire.AssignedOptIn},
		{"opt-in identity from the body's user field", false, nil, `{"model":"m1","user":"alice"}`, wire.AssignedOptIn},
		{"excluded identity is assigned excluded", false, [][2]string{{wire.HeaderUserID, "bob"}}, `{"model":"m1"}`, wire.AssignedExcluded},
		{"excluded tenant is assigned excluded", false, [][2]string{{wire.HeaderUserID, "carol"}, {"x-tenant-id", "bank"}}, `{"model":"m1"}`, wire.AssignedExcluded},
		{"exclusion wins over opt-in", false, [][2]string{{wire.HeaderUserID, "alice"}, {"x-tenant-id", "bank"}}, `{"model":"m1"}`, wire.AssignedExcluded},
		{"a user in no cohort follows the bucket", false, [][2]string{{wire.HeaderUserID, "carol"}}, `{"model":"m1"}`, ""},
		{"cohorts are per model", false, [][2]string{{wire.HeaderUserID, "alice"}}, `{"model":"m2"}`, ""},
		{"trusted cohort header opts in", true, [][2]string{{wire.HeaderCohort, "internal"}}, `{"model":"m1"}`, wire.AssignedOptIn},
		{"untrusted cohort header is ignored", false, [][2]string{{wire.HeaderCohort, "internal"}}, `{"model":"m1"}`, ""},
		{"untrusted cohort header counts with the operator key", false, [][2]string{{wire.HeaderCohort, "internal"}, {wire.HeaderKey, "op-key"}}, `{"model":"m1"}`, wire.AssignedOptIn},
		{"untrusted cohort header with a wrong key is ignored", false, [][2]string{{wire.HeaderCohort, "internal"}, {wire.HeaderKey, "guess"}}, `{"model":"m1"}`, ""},
		{"a client's own assignment is removed", false, [][2]string{{wire.HeaderUserID, "carol"}, {wire.HeaderAssigned, wire.AssignedOptIn}}, `{"model":"m1"}`, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			hs := append([][2]string{{":method", "POST"}, {":path", "/v1/chat/completions"}}, c.headers...)
			h := &fakeHost{headers: hs, body: []byte(c.body)}
			s := cohortPlugin(t, c.trusted).NewStream(h)
			if a := s.OnRequestHeaders(false); a != Pause {
				t.Fatalf("OnRequestHeaders = %v", a)
			}
			if a := s.OnRequestBody(len(c.body), true); a != Continue || h.status != 0 {
				t.Fatalf("OnRequestBody = %v, local reply %d %s", a, h.status, h.reply)
			}
			got, _ := h.get(wire.HeaderAssigned)
			if got != c.want {
				t.Fatalf("%s = %q, want %q", wire.HeaderAssigned, got, c.want)
			}
			if v, ok := h.get(wire.HeaderCohort); ok {
				t.Fatalf("the cohort header reaches the pool: %q", v)
			}
		})
	}
}

func TestCohortConfigRejectsConflictsAndUnknownModels(t *testing.T) {
	base := filterconfig.Config{HashKey: string(testKey), Models: []string{"m1"}}
	for name, mc := range map[string]filterconfig.ModelCohorts{
		"both opted in and excluded": {Model: "m1", OptIn: filterconfig.Members{Identities: []string{"a"}}, Excluded: filterconfig.Members{Identities: []string{"a"}}},
		"an unknown model":           {Model: "m9", OptIn: filterconfig.Members{Identities: []string{"a"}}},
		"tenants without a header":   {Model: "m1", Excluded: filterconfig.Members{Tenants: []string{"bank"}}},
		"an empty identity":          {Model: "m1", OptIn: filterconfig.Members{Identities: []string{""}}},
		"a repeated cohort":          {Model: "m1", OptIn: filterconfig.Members{Cohorts: []string{"x", "x"}}},
	} {
		c := base
		c.Cohorts = []filterconfig.ModelCohorts{mc}
		if _, err := NewPlugin(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestAConfiguredCohortHeaderOfTheOperatorsOwnPassesOn(t *testing.T) {
	p, err := NewPlugin(filterconfig.Config{
		HashKey: string(testKey), Models: []string{"m1"}, CohortHeader: "X-Group", CohortHeaderTrusted: true,
		Cohorts: []filterconfig.ModelCohorts{{Model: "m1", OptIn: filterconfig.Members{Cohorts: []string{"staff"}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	body := `{"model":"m1"}`
	h := &fakeHost{headers: [][2]string{{":method", "POST"}, {":path", "/v1/completions"}, {"x-group", "staff"}}, body: []byte(body)}
	s := p.NewStream(h)
	s.OnRequestHeaders(false)
	s.OnRequestBody(len(body), true)
	if got, _ := h.get(wire.HeaderAssigned); got != wire.AssignedOptIn {
		t.Fatalf("%s = %q, want %s", wire.HeaderAssigned, got, wire.AssignedOptIn)
	}
	if v, ok := h.get("x-group"); !ok || v != "staff" {
		t.Fatalf("the operator's own header was removed or changed: %q %v", v, ok)
	}
}
