//go:build integration

package report

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/internal/procs/chtest"
)

func TestReportEndpointServesTheHTMLBehindTheToken(t *testing.T) {
	ch := chtest.Shared(t)
	conn := chtest.Connect(t, ch)
	st, err := analyzer.OpenRolloutStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ro := fixture().Rollout
	if err := st.Create(ro); err != nil {
		t.Fatal(err)
	}
	api := analyzer.NewAPI(&analyzer.Runner{Store: st}, "tok", nil)
	// A database with no table at all: the report still renders and says
	// what it could not read.
	api.Mount("GET /v1/rollouts/{id}/report", Handler(st, conn, chtest.NewDatabase(), nil))
	srv := httptest.NewServer(api.Handler())
	defer srv.Close()

	c := &analyzer.Client{BaseURL: srv.URL, Token: "tok"}
	html, err := c.Report(context.Background(), ro.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<!DOCTYPE html>", "llmcanary rollout " + ro.ID, "Plan and why", "could not be read"} {
		if !strings.Contains(string(html), want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if _, err := c.Report(context.Background(), "r-nope"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("unknown rollout: %v, want 404", err)
	}
	resp, err := http.Get(srv.URL + "/v1/rollouts/" + ro.ID + "/report")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 401 || strings.Contains(string(b), "Plan and why") {
		t.Fatalf("without the token: %d", resp.StatusCode)
	}
}
