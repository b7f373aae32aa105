//go:build integration

package e2e

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestEnvoyKilledAndRestartedServesTheCurrentWeightsAndLosesNoRequest
// runs two Envoys behind a client that, like a load balancer, sends to the
// first and fails over to the second on a connection error. The first
// Envoy is SIGKILLed under load, the weights change while it is down, and
// it is started again from its bootstrap: no request may fail, and the
// restarted Envoy must route every user as the other one does, by the
// weights set while it was away.
func TestEnvoyKilledAndRestartedServesTheCurrentWeightsAndLosesNoRequest(t *testing.T) {
	f := startFleet(t, fleetOptions{wasm: true, envoys: 2, stableW: 90})
	ctx := context.Background()
	var failed, sent atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 11))
			for {
				select {
				case <-stop:
					return
				default:
				}
				req := request{headers: user(int(r.Uint32()))}
				a, err := f.try(req)
				if err != nil { // the first gateway is gone: the other one
					req.gateway = 1
					a, err = f.try(req)
				}
				sent.Add(1)
				if err != nil || a.status != 200 {
					failed.Add(1)
				}
			}
		}()
	}
	time.Sleep(time.Second)
	if err := f.Envoys[0].Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.API.SetWeights(ctx, model, map[string]float64{"v1": 60, "v2": 40}, ""); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	began := time.Now()
	if err := f.Envoys[0].Restart(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("the killed Envoy served again %v after its restart", time.Since(began).Round(time.Millisecond))
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d of %d requests failed across the Envoy's kill and restart", n, sent.Load())
	}
	t.Logf("%d requests, none failed", sent.Load())

	users := make([]map[string]string, 300)
	for i := range users {
		users[i] = user(1_000_000 + i)
	}
	a0 := f.parallel(t, len(users), func(i int) request { return request{gateway: 0, headers: users[i]} })
	a1 := f.parallel(t, len(users), func(i int) request { return request{gateway: 1, headers: users[i]} })
	canary := 0
	for i := range users {
		if a0[i].version != a1[i].version {
			t.Fatalf("user %d: the restarted Envoy chose %q, the other %q", i, a0[i].version, a1[i].version)
		}
		if a0[i].version == "v2" {
			canary++
		}
	}
	if canary < 80 { // 40 % of 300 is 120; 90/10 would give about 30
		t.Fatalf("%d of %d users on the canary after the restart: the Envoy did not get the weights set while it was down", canary, len(users))
	}
	t.Logf("both Envoys route all %d users alike; %d on the canary", len(users), canary)
}
