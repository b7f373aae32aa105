//go:build integration

package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/analyzer/chsource"
	"github.com/llmcanary/llmcanary/internal/local"
	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/wasm/filter"
	"github.com/llmcanary/llmcanary/xds"
)

const cohortHashKey = "e2e-fleet-hash-key-0123456789"

// identityIn returns the first identity prefix-i whose bucket the 1 %
// route sends to the canary (inCanary) or to stable.
func identityIn(t *testing.T, prefix string, inCanary bool) string {
	t.Helper()
	for i := range 100000 {
		id := fmt.Sprint(prefix, i)
		if got := filter.PickCluster(filter.Bucket([]byte(cohortHashKey), id), []uint32{9900, 100}) == 1; got == inCanary {
			return id
		}
	}
	t.Fatalf("no identity %s* lands in the canary=%v", prefix, inCanary)
	return ""
}

// TestCohortsRouteAtOnePercentAndStayOutOfTheStatistics: with the canary
// at 1 %, an opt-in user (whose bucket is stable's) and anyone a trusted
// hop names in the internal cohort always get the canary; an excluded user
// and an excluded tenant's user (whose buckets are the canary's) never do;
// a client cannot assign itself. Every such request is labelled in both
// telemetry tables, and the analyzer's measurement of the window counts
// only the users the bucket routed.
func TestCohortsRouteAtOnePercentAndStayOutOfTheStatistics(t *testing.T) {
	f := startFleet(t, fleetOptions{stableW: 99, stack: local.Options{Telemetry: true, Measure: timeAll, Wasm: &xds.WasmOptions{
		Path: wasmModule(t), HashKey: cohortHashKey, CohortHeaderTrusted: true, TenantHeader: "x-tenant-id",
	}}})
	ctx := context.Background()
	start := time.Now()
	optIn := identityIn(t, "beta-tester-", false)
	excluded := identityIn(t, "vip-", true)
	tenantUser := identityIn(t, "bank-clerk-", true)
	selfAssigned := identityIn(t, "sneaky-", false)
	if _, err := f.API.SetCohorts(ctx, model, xds.Cohorts{
		OptIn:    xds.CohortMembers{Identities: []string{optIn}, Cohorts: []string{"internal"}},
		Excluded: xds.CohortMembers{Identities: []string{excluded}, Tenants: []string{"acme-bank"}},
	}); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	// The cohorts reach the filter with the listener's configuration: wait
	// until an opt-in request is routed by them, then drop connections the
	// listener accepted before.
	waitFor(t, 30*time.Second, "the opt-in user routed to the canary", func() bool {
		a, err := f.try(request{headers: map[string]string{wire.HeaderUserID: optIn, wire.HeaderRequestID: "warmup"}})
		return err == nil && a.servedBy == "v2"
	})
	f.client.CloseIdleConnections()

	const each = 30
	type group struct {
		name, want, label string
		headers           func(i int) map[string]string
	}
	groups := []group{
		{"opt-in user", "v2", wire.AssignedOptIn, func(int) map[string]string { return map[string]string{wire.HeaderUserID: optIn} }},
		{"internal cohort", "v2", wire.AssignedOptIn, func(i int) map[string]string {
			return map[string]string{wire.HeaderUserID: fmt.Sprint("staff-", i), wire.HeaderCohort: "internal"}
		}},
		{"excluded user", "v1", wire.AssignedExcluded, func(int) map[string]string { return map[string]string{wire.HeaderUserID: excluded} }},
		{"excluded tenant", "v1", wire.AssignedExcluded, func(int) map[string]string {
			return map[string]string{wire.HeaderUserID: tenantUser, "x-tenant-id": "acme-bank"}
		}},
		{"self-assigned client", "v1", "", func(int) map[string]string {
			return map[string]string{wire.HeaderUserID: selfAssigned, wire.HeaderAssigned: wire.AssignedOptIn}
		}},
	}
	for g, gr := range groups {
		answers := f.parallel(t, each, func(i int) request {
			return request{headers: with(gr.headers(i), wire.HeaderRequestID, fmt.Sprintf("cohort-%d-%d", g, i))}
		})
		for i, a := range answers {
			if a.status != 200 || a.servedBy != gr.want || a.version != gr.want {
				t.Fatalf("%s, request %d: %d served by %q (announced %q), want %s", gr.name, i, a.status, a.servedBy, a.version, gr.want)
			}
		}
	}
	// Users routed by their bucket alone, the comparison's population.
	const users = 300
	random := f.parallel(t, users, func(i int) request {
		return request{headers: map[string]string{wire.HeaderUserID: fmt.Sprint("plain-user-", i), wire.HeaderRequestID: fmt.Sprint("plain-", i)}}
	})
	byVersion := map[string]int{}
	for _, a := range random {
		byVersion[a.servedBy]++
	}

	conn, err := f.ClickHouse.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	labelled := func(table string) map[string]uint64 {
		out := map[string]uint64{}
		rows, err := conn.Query(ctx, fmt.Sprintf("SELECT concat(cohort, '/', version), count() FROM %s.%s WHERE model = ? AND request_id LIKE 'cohort-%%' GROUP BY cohort, version", wire.Database, table), model)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var k string
			var n uint64
			if err := rows.Scan(&k, &n); err != nil {
				t.Fatal(err)
			}
			out[k] = n
		}
		return out
	}
	want := fmt.Sprint(map[string]uint64{"/v1": each, "excluded/v1": 2 * each, "opt_in/v2": 2 * each})
	for _, table := range []string{wire.TableRequests, wire.TableRequestLog} {
		deadline := time.Now().Add(30 * time.Second)
		for got := fmt.Sprint(labelled(table)); got != want; got = fmt.Sprint(labelled(table)) {
			if time.Now().After(deadline) {
				t.Fatalf("%s rows by cohort/version: %s, want %s", table, got, want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitFor(t, 30*time.Second, "a telemetry row for every plain request", func() bool {
		var n uint64
		if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT count() FROM %s.%s WHERE model = ? AND request_id LIKE 'plain-%%'", wire.Database, wire.TableRequests), model).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == users
	})
	// The analyzer measures the users the bucket routed: the plain users and
	// the one who tried to assign itself (its request went by its bucket).
	ms, err := chsource.New(conn, wire.Database).Measure(ctx, analyzer.Window{
		Model: model, Stable: "v1", Canary: "v2", RolloutFrom: start, From: start, To: time.Now().Add(time.Second), TailQuantile: 0.95,
	})
	if err != nil {
		t.Fatal(err)
	}
	if ms.Canary.Requests != byVersion["v2"] || ms.Canary.Users != byVersion["v2"] ||
		ms.Stable.Requests != byVersion["v1"]+each || ms.Stable.Users != byVersion["v1"]+1 {
		t.Fatalf("measured canary %d requests of %d users, stable %d of %d; the bucket routed canary %d, stable %d users (+1 with %d requests)",
			ms.Canary.Requests, ms.Canary.Users, ms.Stable.Requests, ms.Stable.Users, byVersion["v2"], byVersion["v1"], each)
	}
	t.Logf("bucket-routed users: %v; cohort requests labelled and left out: %s", byVersion, want)
}
