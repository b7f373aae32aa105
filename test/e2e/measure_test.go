//go:build integration

package e2e

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/internal/local"
	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/xds"
)

// TestStableIsMeasuredByUserAndEveryRequestIsLogged: with the default
// measurement by need and a 10 % canary, every canary request is timed, a
// sample of stable's users is timed with all of their requests, no other
// stable request is, and every request has its row in the request log,
// which says whether and at which rate it was measured. The management API
// reports the model's sampling.
func TestStableIsMeasuredByUserAndEveryRequestIsLogged(t *testing.T) {
	f := startFleet(t, fleetOptions{wasm: true, stableW: 90, stack: local.Options{Telemetry: true}})
	ctx := context.Background()
	m, err := f.API.Model(ctx, model)
	if err != nil {
		t.Fatal(err)
	}
	want := xds.SamplingOf(m, xds.Measure{}, true)
	if m.Sampling == nil || *m.Sampling != want || want.StableRate <= 0 || want.StableRate >= 1 {
		t.Fatalf("the API reports sampling %+v, want %+v strictly between none and all", m.Sampling, want)
	}
	const users, perUser = 400, 3
	answers := f.parallel(t, users*perUser, func(i int) request {
		return request{headers: map[string]string{wire.HeaderUserID: fmt.Sprint("sampled-user-", i%users), wire.HeaderRequestID: fmt.Sprint("measure-req-", i)}}
	})
	version := map[string]string{} // request id → version
	for i, a := range answers {
		if a.status != 200 {
			t.Fatalf("request %d: status %d %s", i, a.status, a.body)
		}
		version[fmt.Sprint("measure-req-", i)] = a.version
	}
	conn, err := f.ClickHouse.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	logged := map[string]float64{} // request id → sample rate in the request log
	waitFor(t, 30*time.Second, "a request-log row for every request", func() bool {
		rows, err := conn.Query(ctx, fmt.Sprintf("SELECT request_id, sample_rate FROM %s.%s WHERE model = ? AND request_id LIKE 'measure-req-%%'", wire.Database, wire.TableRequestLog), model)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var id string
			var rate float64
			if err := rows.Scan(&id, &rate); err != nil {
				t.Fatal(err)
			}
			logged[id] = rate
		}
		return len(logged) >= users*perUser
	})
	expectMeasured := 0
	for id, rate := range logged {
		if rate > 0 {
			expectMeasured++
		}
		if version[id] == "v2" && rate != 1 {
			t.Errorf("canary request %s logged at sample rate %v, want 1", id, rate)
		}
		if version[id] == "v1" && rate != 0 && math.Abs(rate-want.StableRate) > 1e-9 {
			t.Errorf("stable request %s logged at sample rate %v, want %v or 0", id, rate, want.StableRate)
		}
	}
	type row struct {
		user    uint64
		version string
		rate    float64
	}
	timed := map[string]row{}
	waitFor(t, 30*time.Second, "a telemetry row for every measured request", func() bool {
		rows, err := conn.Query(ctx, fmt.Sprintf("SELECT request_id, bucket, version, sample_rate FROM %s.%s WHERE model = ? AND request_id LIKE 'measure-req-%%'", wire.Database, wire.TableRequests), model)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var id string
			var r row
			if err := rows.Scan(&id, &r.user, &r.version, &r.rate); err != nil {
				t.Fatal(err)
			}
			timed[id] = r
		}
		return len(timed) >= expectMeasured
	})
	perUserRows := map[uint64]int{}
	stableUsers := map[uint64]bool{}
	for id, r := range timed {
		if logged[id] == 0 {
			t.Errorf("request %s was timed but the request log says it was not measured", id)
		}
		if r.version == "v2" && r.rate != 1 || r.version == "v1" && math.Abs(r.rate-want.StableRate) > 1e-9 {
			t.Errorf("request %s on %s timed at rate %v", id, r.version, r.rate)
		}
		if r.version == "v1" {
			perUserRows[r.user]++
			stableUsers[r.user] = true
		}
	}
	for id, v := range version {
		if _, ok := timed[id]; v == "v2" && !ok {
			t.Errorf("canary request %s was not timed", id)
		}
	}
	for u, n := range perUserRows {
		if n != perUser {
			t.Errorf("stable user %d has %d of their %d requests timed: sampling must take a user whole", u, n, perUser)
		}
	}
	// About 360 users are on stable; the sample is binomial around the rate.
	onStable := 0
	seen := map[string]bool{}
	for i, a := range answers {
		u := fmt.Sprint(i % users)
		if a.version == "v1" && !seen[u] {
			seen[u] = true
			onStable++
		}
	}
	mean := want.StableRate * float64(onStable)
	sd := math.Sqrt(mean * (1 - want.StableRate))
	if got := float64(len(stableUsers)); math.Abs(got-mean) > 4*sd {
		t.Errorf("%d of %d stable users timed, want about %.0f (rate %v)", len(stableUsers), onStable, mean, want.StableRate)
	}
	t.Logf("%d requests: %d timed (%d stable users of %d at rate %v); every one in the request log", len(version), len(timed), len(stableUsers), onStable, want.StableRate)
}
