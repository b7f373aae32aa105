//go:build integration

package e2e

import (
	"context"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/sim"
	"github.com/llmcanary/llmcanary/xds"
)

func TestSplitFollowsWeightsWithinBinomialInterval(t *testing.T) {
	f := startFleet(t, fleetOptions{stableW: 90})
	// Without a bucket header Envoy draws its own random value: the split
	// is a true binomial sample.
	answers := f.parallel(t, 3000, func(int) request { return request{} })
	canary := 0
	for i, a := range answers {
		if a.status != 200 {
			t.Fatalf("request %d: status %d %s", i, a.status, a.body)
		}
		if a.version != a.servedBy {
			t.Fatalf("request %d: Envoy announced %q but %q served it", i, a.version, a.servedBy)
		}
		if a.version == "v2" {
			canary++
		}
	}
	lo, hi := binomialBounds(len(answers), 0.10, 3.29)
	t.Logf("canary served %d of %d requests at 10%% (99.9%% interval %.0f..%.0f)", canary, len(answers), lo, hi)
	if float64(canary) < lo || float64(canary) > hi {
		t.Fatalf("canary got %d of %d requests; 99.9%% binomial interval for 10%% is %.0f..%.0f", canary, len(answers), lo, hi)
	}
}

func TestBucketHeaderPicksClusterByEnvoysModuloRule(t *testing.T) {
	f := startFleet(t, fleetOptions{stableW: 90})
	rng := rand.New(rand.NewPCG(7, 7))
	buckets := make([]uint64, 1000)
	for i := range buckets {
		buckets[i] = rng.Uint64()
	}
	answers := f.parallel(t, len(buckets), func(i int) request {
		return request{bucket: strconv.FormatUint(buckets[i], 10)}
	})
	for i, a := range answers {
		want := "v1"
		if buckets[i]%xds.TotalWeight >= 9000 {
			want = "v2"
		}
		if a.version != want || a.servedBy != want {
			t.Fatalf("bucket %d: served by %q (announced %q), want %q", buckets[i], a.servedBy, a.version, want)
		}
	}
}

func TestFixedBucketAlwaysLandsOnTheSameVersion(t *testing.T) {
	f := startFleet(t, fleetOptions{stableW: 50})
	for _, pos := range []uint64{0, 4999, 5000, 9999} {
		want := "v1"
		if pos >= 5000 {
			want = "v2"
		}
		bucket := bucketFor(pos, 12345)
		answers := f.parallel(t, 100, func(int) request { return request{bucket: bucket} })
		for i, a := range answers {
			if a.version != want || a.servedBy != want {
				t.Fatalf("bucket %s (position %d) request %d went to %q/%q, want %q every time", bucket, pos, i, a.version, a.servedBy, want)
			}
		}
	}
}

func TestWeightChangeReachesEnvoyAndNextRequestsFollowIt(t *testing.T) {
	f := startFleet(t, fleetOptions{stableW: 90})
	ctx := context.Background()
	// Position 7000 is stable at 90/10 and canary at 50/50.
	bucket := bucketFor(7000, 1)
	if a := f.do(t, request{bucket: bucket}); a.version != "v1" {
		t.Fatalf("before the change: %q, want v1", a.version)
	}
	start := time.Now()
	m, err := f.API.SetWeights(ctx, model, map[string]float64{"v1": 50, "v2": 50}, "")
	if err != nil {
		t.Fatal(err)
	}
	if m.Weights["v2"] != 50 {
		t.Fatalf("API answered weights %v", m.Weights)
	}
	// The next requests follow the new weights once Envoy has the route.
	for {
		a := f.do(t, request{bucket: bucket})
		if a.version == "v2" {
			t.Logf("weight change served by Envoy %v after the API call", time.Since(start).Round(time.Millisecond))
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("5 s after the weight change the bucket still goes to %q", a.version)
		}
	}
	answers := f.parallel(t, 200, func(int) request { return request{bucket: bucket} })
	for i, a := range answers {
		if a.version != "v2" {
			t.Fatalf("request %d after the change went to %q", i, a.version)
		}
	}
}

func TestEnvoyKeepsRoutingWhileControlPlaneIsDownAndStateIsRestored(t *testing.T) {
	f := startFleet(t, fleetOptions{stableW: 80})
	ctx := context.Background()
	revBefore := f.CP.Store.State().Revision
	positions := []uint64{0, 3000, 7999, 8000, 9999}
	route := func() []string {
		var got []string
		for _, p := range positions {
			a := f.do(t, request{bucket: bucketFor(p, 99)})
			if a.status != 200 {
				t.Fatalf("position %d: status %d %s", p, a.status, a.body)
			}
			got = append(got, a.version)
		}
		return got
	}
	want := strings.Join(route(), ",")
	if want != "v1,v1,v1,v2,v2" {
		t.Fatalf("routing at 80/20: %s", want)
	}

	f.StopControlPlane()
	for i := 0; i < 3; i++ {
		if got := strings.Join(route(), ","); got != want {
			t.Fatalf("with the control plane down routing changed: %s, want %s", got, want)
		}
		time.Sleep(300 * time.Millisecond)
	}

	if err := f.StartControlPlane(ctx); err != nil {
		t.Fatal(err)
	}
	if rev := f.CP.Store.State().Revision; rev != revBefore {
		t.Fatalf("restarted control plane is at revision %d, want %d", rev, revBefore)
	}
	if w := f.CP.Store.State().Models[model].Weights; w["v1"] != 80 || w["v2"] != 20 {
		t.Fatalf("restored weights %v, want v1=80 v2=20", w)
	}
	// Envoy reconnects and gets the same revision: routing does not move.
	deadline := time.Now().Add(10 * time.Second)
	for f.CP.Publisher.Published() != revBefore && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := strings.Join(route(), ","); got != want {
		t.Fatalf("after the restart routing changed: %s, want %s", got, want)
	}
	// And the restarted control plane steers again.
	if _, err := f.API.SetWeights(ctx, model, map[string]float64{"v1": 100}, ""); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(route(), ","); got != "v1,v1,v1,v1,v1" {
		t.Fatalf("after a change through the restarted control plane: %s", got)
	}
}

func TestTwoEnvoysRouteEachBucketToTheSameVersion(t *testing.T) {
	f := startFleet(t, fleetOptions{envoys: 2, stableW: 70})
	rng := rand.New(rand.NewPCG(3, 3))
	buckets := make([]string, 500)
	for i := range buckets {
		buckets[i] = strconv.FormatUint(rng.Uint64(), 10)
	}
	a0 := f.parallel(t, len(buckets), func(i int) request { return request{gateway: 0, bucket: buckets[i]} })
	a1 := f.parallel(t, len(buckets), func(i int) request { return request{gateway: 1, bucket: buckets[i]} })
	canary := 0
	for i := range buckets {
		if a0[i].version != a1[i].version {
			t.Fatalf("bucket %s: Envoy gw-0 (state of the world xDS) chose %q, gw-1 (delta xDS) chose %q", buckets[i], a0[i].version, a1[i].version)
		}
		if a0[i].version == "v2" {
			canary++
		}
	}
	t.Logf("both Envoys agree on all %d buckets; %d in the canary", len(buckets), canary)
}

func TestGatewayAnswersUnknownModelsAndListsModels(t *testing.T) {
	f := startFleet(t, fleetOptions{})
	a := f.do(t, request{headers: map[string]string{wire.HeaderModel: "gpt-9"}, body: `{"model":"gpt-9","messages":[]}`})
	if a.status != 404 || !strings.Contains(a.body, "model_not_found") {
		t.Fatalf("unknown model: %d %s", a.status, a.body)
	}
	resp, err := http.Get("http://" + f.Gateway[0] + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var list struct {
		Data []struct{ ID string } `json:"data"`
	}
	if err := jsonDecode(resp, &list); err != nil || len(list.Data) != 1 || list.Data[0].ID != model {
		t.Fatalf("/v1/models: %v %+v", err, list)
	}
}

func TestStreamedTokensPassThroughEnvoyAsTheyAreGenerated(t *testing.T) {
	f := startFleet(t, fleetOptions{
		stableW: 100,
		stable:  sim.Profile{Version: "v1", Model: model, TTFT: sim.Fixed(100), ITL: sim.Fixed(40), OutputTokens: sim.FixedCount(10)},
	})
	req, _ := http.NewRequest("POST", "http://"+f.Gateway[0]+"/v1/chat/completions",
		strings.NewReader(`{"model":"`+model+`","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set(wire.HeaderModel, model)
	start := time.Now()
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	tokens, at, err := sseTokens(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if len(tokens) != 10 {
		t.Fatalf("got %d tokens, want 10", len(tokens))
	}
	// Envoy must not buffer the stream: the first token arrives long before
	// the last one was generated (100 ms + 9×40 ms).
	first, last := at[0].Sub(start), at[len(at)-1].Sub(start)
	t.Logf("first token after %v, last after %v", first.Round(time.Millisecond), last.Round(time.Millisecond))
	if last-first < 200*time.Millisecond {
		t.Fatalf("tokens arrived together (first %v, last %v): the stream was buffered", first, last)
	}
}

func TestFleetReportsTheRevisionEveryEnvoyAccepted(t *testing.T) {
	f := startFleet(t, fleetOptions{envoys: 2, stableW: 90})
	ctx := context.Background()
	m, err := f.API.SetWeights(ctx, model, map[string]float64{"v1": 60, "v2": 40}, "")
	if err != nil || m.Weights["v2"] != 40 {
		t.Fatalf("set weights: %v", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := f.API.WaitApplied(wctx); err != nil {
		t.Fatal(err)
	}
	fleet, err := f.API.Fleet(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(fleet.Nodes) != 2 || fleet.Nodes[0].ID != "gw-0" || fleet.Nodes[1].ID != "gw-1" {
		t.Fatalf("fleet: %+v", fleet.Nodes)
	}
	for _, n := range fleet.Nodes {
		if n.RouteRevision != fleet.Revision {
			t.Fatalf("%s (state of the world: gw-0, delta: gw-1) accepted revision %d, current is %d", n.ID, n.RouteRevision, fleet.Revision)
		}
	}
	// What the fleet says it accepted is what it serves.
	for i, e := range f.Envoys {
		if v, err := e.RouteVersion(ctx); err != nil || v != fleet.Revision {
			t.Fatalf("Envoy %d serves route revision %d (%v), the fleet status says %d", i, v, err, fleet.Revision)
		}
	}
	// An Envoy that goes away leaves the fleet.
	f.Envoys[1].Stop()
	deadline := time.Now().Add(10 * time.Second)
	for {
		fl, err := f.API.Fleet(ctx)
		if err == nil && len(fl.Nodes) == 1 && fl.Nodes[0].ID == "gw-0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a stopped Envoy is still listed: %+v %v", fl, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
