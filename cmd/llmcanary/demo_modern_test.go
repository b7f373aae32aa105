//go:build integration

package main

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/extproc/chwriter/chwritertest"
	"github.com/llmcanary/llmcanary/internal/procs/chdbtest"
	"github.com/llmcanary/llmcanary/internal/procs/chtest"
	"github.com/llmcanary/llmcanary/internal/procs/modernch"
	"github.com/llmcanary/llmcanary/internal/wire"
)

// The demo's latency charts read the same values from 18.16 and from a
// modern server (chDB) holding the same rows.
func TestDemoLatencyReadIsTheSameOnAModernServer(t *testing.T) {
	ch := chtest.Own(t)
	ctx := context.Background()
	var recs []extproc.Record
	now := time.Now().UTC()
	for i := range 300 {
		r := extproc.Record{Time: now.Add(time.Duration(i) * 7 * time.Millisecond), RequestID: fmt.Sprintf("d-%d", i), Model: "m",
			Version: []string{"v1", "v2"}[i%2], Streamed: i%5 != 0, Status: 200, TTFTMs: float64(40 + i%37), TotalMs: float64(400 + i%91)}
		if i%13 == 0 {
			r.Failure, r.Status = extproc.FailureHTTP5xx, 503
		}
		recs = append(recs, r)
	}
	chwritertest.WriteRecords(t, ch, wire.Database, recs)
	old := chtest.Connect(t, ch)
	modern := chdbtest.Start(t)
	if _, err := modernch.Mirror(ctx, old, modern, wire.Database); err != nil {
		t.Fatal(err)
	}
	wantTTFT, wantTotal, err := readLatencies(ctx, old, wire.Database, "m")
	if err != nil {
		t.Fatal(err)
	}
	gotTTFT, gotTotal, err := readLatencies(ctx, modern, wire.Database, "m")
	if err != nil {
		t.Fatal(err)
	}
	for name, pair := range map[string][2]map[string][]float64{"ttft": {wantTTFT, gotTTFT}, "total": {wantTotal, gotTotal}} {
		want, got := pair[0], pair[1]
		if len(want["v1"]) < 100 || len(want) != 2 {
			t.Fatalf("%s on 18.16: %d versions, %d values of v1", name, len(want), len(want["v1"]))
		}
		for v := range want {
			w, g := slices.Sorted(slices.Values(want[v])), slices.Sorted(slices.Values(got[v]))
			if !slices.Equal(w, g) {
				t.Errorf("%s of %s: %d values on the modern server, %d on 18.16, or other values", name, v, len(g), len(w))
			}
		}
	}
}
