package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
)

func TestWeightsWarnsWhenNoEnvoyServesTheChange(t *testing.T) {
	srv, st := managementAPI(t)
	var err error
	var out bytes.Buffer
	err = runWeights(context.Background(), []string{"--api", srv.URL, "--model", "m", "--wait", "100ms", "v1=100", "v2=0"}, &out)
	if !errors.Is(err, ErrNotInForce) || !strings.Contains(err.Error(), "served by 0 of 0 connected Envoys") {
		t.Fatalf("with no Envoy connected: %v, want %v saying 0 of 0", err, ErrNotInForce)
	}
	if st.State().Models["m"].Weights["v1"] != 100 || !strings.Contains(out.String(), "v1 100 %") {
		t.Fatalf("the change must stand: state %v, printed %q", st.State().Models["m"].Weights, out.String())
	}
}
