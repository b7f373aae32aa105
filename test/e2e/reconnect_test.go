//go:build integration

package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/envoy"
)

// A rollback issued right after the control plane comes back must reach
// Envoy within the xDS retry backoff the bootstrap configures, however long
// the control plane was away: Envoy's default backoff grows to 30 s.
func TestRollbackAfterControlPlaneRestartReachesEnvoyWithinTheRetryBackoff(t *testing.T) {
	f := startFleet(t, fleetOptions{stableW: 50})
	ctx := context.Background()
	canaryBucket := bucketFor(7500, 5)
	if a := f.do(t, request{bucket: canaryBucket}); a.version != "v2" {
		t.Fatalf("before the restart position 7500 went to %q, want v2", a.version)
	}

	f.StopControlPlane()
	// Long enough for several failed reconnects: with Envoy's default
	// backoff (500 ms base, 30 s cap) the next attempt would then be up to
	// several seconds away.
	time.Sleep(6 * time.Second)
	if err := f.StartControlPlane(ctx); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	// The answer waits for the fleet and says whether the rollback is in
	// force.
	m, applied, err := f.API.SetWeightsWait(ctx, model, map[string]float64{"v1": 100, "v2": 0}, "", 10*time.Second)
	if err != nil || m.Weights["v2"] != 0 {
		t.Fatalf("rollback: %+v, %v", m, err)
	}
	if !applied.InForce() || applied.Connected != 1 {
		t.Fatalf("the rollback's answer says %s, want it served by the one Envoy", applied)
	}
	rev := applied.Revision

	// The bound: one backoff interval (Envoy draws the wait uniformly below
	// the cap) plus the time to connect and exchange the snapshot over
	// loopback on a busy machine.
	bound := envoy.XDSRetryMaxInterval + 500*time.Millisecond
	var acked, connected time.Time
	for {
		fl, err := f.API.Fleet(ctx)
		if err == nil && len(fl.Nodes) == 1 && fl.Nodes[0].RouteRevision >= rev {
			acked, connected = fl.Nodes[0].AckedAt, fl.Nodes[0].ConnectedAt
			break
		}
		if time.Since(back) > 30*time.Second {
			t.Fatalf("30 s after the restart Envoy has not accepted revision %d: %+v %v", rev, fl, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	reconnect, apply := connected.Sub(back), acked.Sub(back)
	t.Logf("Envoy reconnected %v and accepted the rollback %v after the control plane was back (bound %v)",
		reconnect.Round(time.Millisecond), apply.Round(time.Millisecond), bound)
	if apply > bound {
		t.Fatalf("Envoy accepted the rollback %v after the control plane was back (reconnected after %v); the configured backoff bounds it by %v",
			apply.Round(time.Millisecond), reconnect.Round(time.Millisecond), bound)
	}
	if a := f.do(t, request{bucket: canaryBucket}); a.version != "v1" {
		t.Fatalf("after the rollback position 7500 went to %q, want v1", a.version)
	}
}
