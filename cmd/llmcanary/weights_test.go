package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/llmcanary/llmcanary/xds"
)

func TestWeightsWarnsWhenNoEnvoyServesTheChange(t *testing.T) {
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
	defer srv.Close()
	c := &xds.Client{BaseURL: srv.URL, Token: "tok"}
	_, err = c.PutModel(context.Background(), &xds.Model{Name: "m", Stable: "v1",
		Versions: []xds.Version{{Name: "v1", Endpoints: []string{"127.0.0.1:1"}}, {Name: "v2", Endpoints: []string{"127.0.0.1:2"}}},
		Weights:  map[string]float64{"v1": 90, "v2": 10}})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("LLMCANARY_API_TOKEN", "tok")
	var out bytes.Buffer
	err = runWeights(context.Background(), []string{"--api", srv.URL, "--model", "m", "--wait", "100ms", "v1=100", "v2=0"}, &out)
	if !errors.Is(err, ErrNotInForce) || !strings.Contains(err.Error(), "served by 0 of 0 connected Envoys") {
		t.Fatalf("with no Envoy connected: %v, want %v saying 0 of 0", err, ErrNotInForce)
	}
	if st.State().Models["m"].Weights["v1"] != 100 || !strings.Contains(out.String(), "v1 100 %") {
		t.Fatalf("the change must stand: state %v, printed %q", st.State().Models["m"].Weights, out.String())
	}
}
