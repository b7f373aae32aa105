package main

import (
	"bytes"
	"context"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/llmcanary/llmcanary/xds"
)

func managementAPI(t *testing.T) (*httptest.Server, *xds.StateStore) {
	t.Helper()
	st, err := xds.OpenStateStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	pub := xds.NewPublisher(xds.DefaultGateway(), log)
	if err := pub.Publish(st.State()); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(xds.NewAPI(st, pub, "tok", log).Handler())
	t.Cleanup(srv.Close)
	c := &xds.Client{BaseURL: srv.URL, Token: "tok", Actor: "alice"}
	_, err = c.PutModel(context.Background(), &xds.Model{Name: "m", Stable: "v1",
		Versions: []xds.Version{{Name: "v1", Endpoints: []string{"127.0.0.1:1"}}, {Name: "v2", Endpoints: []string{"127.0.0.1:2"}}},
		Weights:  map[string]float64{"v1": 99, "v2": 1}})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("LLMCANARY_API_TOKEN", "tok")
	return srv, st
}

func TestCohortsCommandSetsShowsAndClearsAModelsCohorts(t *testing.T) {
	srv, st := managementAPI(t)
	var out bytes.Buffer
	err := runCohorts(context.Background(), []string{"--api", srv.URL, "--model", "m", "--opt-in-cohort", "internal,beta", "--opt-in-identity", "ann", "--exclude-tenant", "bank"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	c := st.State().Models["m"].Cohorts
	if c == nil || strings.Join(c.OptIn.Cohorts, ",") != "internal,beta" || c.OptIn.Identities[0] != "ann" || c.Excluded.Tenants[0] != "bank" {
		t.Fatalf("stored cohorts %+v", c)
	}
	if s := out.String(); !strings.Contains(s, "opt-in → v2") || !strings.Contains(s, "excluded → v1 (stable)") || !strings.Contains(s, "internal, beta") {
		t.Fatalf("printed %q", s)
	}
	if err := runCohorts(context.Background(), []string{"--api", srv.URL, "--model", "m", "--clear", "--exclude-tenant", "x"}, &out); err == nil {
		t.Fatal("--clear with members accepted")
	}
	out.Reset()
	if err := runCohorts(context.Background(), []string{"--api", srv.URL, "--model", "m", "--clear"}, &out); err != nil || st.State().Models["m"].Cohorts != nil {
		t.Fatalf("clear: %v, cohorts %+v", err, st.State().Models["m"].Cohorts)
	}
}

func TestHistoryCommandListsEveryStableVersion(t *testing.T) {
	srv, _ := managementAPI(t)
	c := &xds.Client{BaseURL: srv.URL, Token: "tok", Actor: "analyzer"}
	if _, err := c.SetWeightsBecause(context.Background(), "m", map[string]float64{"v2": 100}, "v2", xds.Cause{Rollout: "r-7", Reason: "promote: within tolerance"}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := runHistory(context.Background(), []string{"--api", srv.URL, "m"}, &out); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	if !strings.Contains(s, "m: stable v2") || !strings.Contains(s, "v1  by alice: put model m") || !strings.Contains(s, "v2 (was v1)  by analyzer, rollout r-7: promote: within tolerance") {
		t.Fatalf("printed %q", s)
	}
}
