package xds

import (
	"context"
	"strings"
	"testing"
)

func TestCohortsAreValidatedWithTheModel(t *testing.T) {
	srv, st, _ := newTestAPI(t, t.TempDir())
	if code, body := call(t, srv, "PUT", "/v1/models/llama", testToken, llamaModel); code != 200 {
		t.Fatalf("create: %d %s", code, body)
	}
	cases := []struct {
		name, body, want string
	}{
		{"both opted in and excluded", `{"opt_in":{"identities":["a"]},"excluded":{"identities":["a"]}}`, "both opted in and excluded"},
		{"an empty identity", `{"opt_in":{"identities":[""]}}`, "empty"},
		{"a repeated tenant", `{"excluded":{"tenants":["t","t"]}}`, "listed twice"},
		{"an unknown field", `{"opt_in":{"users":["a"]}}`, "users"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := st.State().Revision
			code, body := call(t, srv, "PUT", "/v1/models/llama/cohorts", testToken, c.body)
			if code != 400 || !strings.Contains(body, c.want) {
				t.Fatalf("%d %s, want 400 naming %q", code, body, c.want)
			}
			if st.State().Revision != before {
				t.Fatal("a rejected change moved the revision")
			}
		})
	}
	c := &Client{BaseURL: srv.URL, Token: testToken}
	m, err := c.SetCohorts(context.Background(), "llama", Cohorts{OptIn: CohortMembers{Cohorts: []string{"internal"}}, Excluded: CohortMembers{Identities: []string{"bob"}}})
	if err != nil || m.Cohorts == nil || m.Cohorts.OptIn.Cohorts[0] != "internal" {
		t.Fatalf("set cohorts: %+v %v", m, err)
	}
	if m, err = c.SetCohorts(context.Background(), "llama", Cohorts{}); err != nil || m.Cohorts != nil {
		t.Fatalf("clearing cohorts: %+v %v", m.Cohorts, err)
	}
}

func TestOptInGoesToTheFirstCanaryWithTraffic(t *testing.T) {
	m := &Model{Name: "m", Stable: "v1", Versions: []Version{{Name: "v1"}, {Name: "v2"}, {Name: "v3"}}, Weights: map[string]float64{"v1": 99}}
	if v, ok := m.OptInCanary(); ok {
		t.Fatalf("no canary has traffic, got %q", v)
	}
	m.Weights = map[string]float64{"v1": 98, "v2": 0, "v3": 1, "v4": 1}
	if v, ok := m.OptInCanary(); !ok || v != "v3" {
		t.Fatalf("got %q %v, want v3", v, ok)
	}
}
