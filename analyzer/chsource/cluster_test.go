//go:build integration

package chsource

import (
	"context"
	"fmt"
	"math"
	"net/http/httptest"
	"reflect"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/analyzer/quality"
	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/extproc/chwriter/chwritertest"
	"github.com/llmcanary/llmcanary/internal/procs"
	"github.com/llmcanary/llmcanary/internal/procs/chtest"
	"github.com/llmcanary/llmcanary/sim"
)

// clusterFixture is a stage of a rollout: 600 users, a fifth of them on
// the canary, which is slower, fails more often and answers badly more
// often; every third request captured for the judge. Each request has its
// own millisecond, so both servers return the rows in one order.
func clusterFixture(from time.Time) []extproc.Record {
	var recs []extproc.Record
	i := 0
	for u := range 600 {
		bucket := uint64(u)*0x9E3779B97F4A7C15 + 12345
		canary := u%5 == 0
		for k := range 1 + u%4 {
			i++
			v, lat := "v1", 400+float64((u*7+k*13)%300)
			if canary {
				v, lat = "v2", lat*1.4
			}
			r := ok(fmt.Sprintf("u%d-r%d", u, k), v, from.Add(time.Duration(i)*time.Millisecond*97), true, lat, lat/4, 20, 40, 0.001)
			r.Bucket = bucket
			if canary && i%9 == 0 || !canary && i%40 == 0 {
				r.Status, r.Failure = 503, extproc.FailureHTTP5xx
			}
			if i%3 == 0 {
				answer := "It is in Paris, France."
				if canary && i%2 == 0 {
					answer = "Sure! " + sim.BadAnswerMarker
				}
				r.Captured, r.Prompt, r.Completion = true, "Where is the Eiffel Tower?", answer
			}
			recs = append(recs, r)
		}
	}
	return recs
}

// judgeAll scores every captured answer of db on conn's server with the
// simulated judge, as the analyzer's judge does.
func judgeAll(t *testing.T, conn driver.Conn, db, judgeURL string, want int) {
	t.Helper()
	store, err := quality.OpenScoreStore(context.Background(), conn, db)
	if err != nil {
		t.Fatal(err)
	}
	judge, err := quality.NewJudge(quality.JudgeOptions{Conn: conn, Store: store, Endpoint: judgeURL})
	if err != nil {
		t.Fatal(err)
	}
	judged := 0
	for {
		n, err := judge.RunOnce(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		judged += n
	}
	if judged != want {
		t.Fatalf("judged %d, want %d", judged, want)
	}
}

// TestDecisionOverAClusterEqualsTheDecisionOverOneServer writes the same
// requests to one server and to a 2-shard cluster, has the judge score
// the captured answers on each, and measures and decides the stage on
// each: the analyzer reads the cluster through its Distributed tables
// (joined with the scores on the server it queries) and reaches the same
// measurements and the same decision.
func TestDecisionOverAClusterEqualsTheDecisionOverOneServer(t *testing.T) {
	lone, servers, db, from, now, recs := loneAndCluster(t, clusterFixture)

	captured := 0 // the judge grades the answers of successful requests
	for _, r := range recs {
		if r.Captured && r.Failure == "" {
			captured++
		}
	}
	judgeSim, err := sim.New(sim.Profile{Version: "judge", Judge: true})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(judgeSim)
	defer srv.Close()
	loneConn, clusterConn := chtest.Connect(t, lone), chtest.Connect(t, servers[1])
	judgeAll(t, loneConn, db, srv.URL, captured)
	judgeAll(t, clusterConn, db, srv.URL, captured)

	w := analyzer.Window{Model: "m", Stable: "v1", Canary: "v2", RolloutFrom: from, From: from, To: now, TailQuantile: 0.9}
	p := analyzer.DefaultPolicy()
	p.Stages[0].Weight, p.Stages[0].MinSamples = 20, 100
	state := analyzer.NewStageState(0, from)
	measure := func(conn driver.Conn) (analyzer.Measurements, analyzer.Decision) {
		m, err := New(conn, db).Measure(context.Background(), w)
		if err != nil {
			t.Fatal(err)
		}
		d, _ := analyzer.Decide(p, state, m, now)
		return m, d
	}
	mLone, dLone := measure(loneConn)
	mCluster, dCluster := measure(clusterConn)

	if mLone.Canary.Requests == 0 || mLone.Stable.Requests == 0 || mLone.Canary.Judged == 0 {
		t.Fatalf("the fixture measures nothing to decide on: %+v", mLone)
	}
	if mCluster.Canary.Requests != mLone.Canary.Requests || mCluster.Stable.Requests != mLone.Stable.Requests ||
		mCluster.Canary.Judged != mLone.Canary.Judged || mCluster.Stable.Judged != mLone.Stable.Judged {
		t.Fatalf("cluster measures canary %d requests (%d judged), stable %d (%d); one server %d (%d), %d (%d)",
			mCluster.Canary.Requests, mCluster.Canary.Judged, mCluster.Stable.Requests, mCluster.Stable.Judged,
			mLone.Canary.Requests, mLone.Canary.Judged, mLone.Stable.Requests, mLone.Stable.Judged)
	}
	if !reflect.DeepEqual(mCluster, mLone) {
		t.Errorf("measurements differ between the cluster and one server")
	}
	if !reflect.DeepEqual(dCluster, dLone) {
		t.Fatalf("decision over the cluster:\n  %s %s: %s\nover one server:\n  %s %s: %s",
			dCluster.Action, dCluster.Code, dCluster.Reason, dLone.Action, dLone.Code, dLone.Reason)
	}
	if dLone.Code == analyzer.CodeNoData {
		t.Fatalf("decision %s: %s, want one on data", dLone.Code, dLone.Reason)
	}
	t.Logf("both decide %s (%s): %s", dLone.Action, dLone.Code, dLone.Reason)
}

// loneAndCluster writes the rows fixture makes for the last five minutes
// to one server and to a 2-shard cluster, in one new database.
func loneAndCluster(t *testing.T, fixture func(from time.Time) []extproc.Record) (lone *procs.ClickHouse, servers []*procs.ClickHouse, db string, from, now time.Time, recs []extproc.Record) {
	lone = chtest.Shared(t)
	servers = chtest.Cluster(t, "telemetry", 2)
	db = chtest.NewDatabase()
	now = time.Now().UTC().Truncate(time.Second)
	from = now.Add(-5 * time.Minute)
	recs = fixture(from)
	chwritertest.WriteRecords(t, lone, db, recs)
	chwritertest.WriteRecordsToCluster(t, servers, "telemetry", db, recs)
	return lone, servers, db, from, now, recs
}

// shadowFixture is a shadow stage: 400 users' requests served by stable
// v1, each mirrored to v2, which answers every other request badly and
// more slowly; all answers captured.
func shadowFixture(from time.Time) []extproc.Record {
	var recs []extproc.Record
	for i := range 400 {
		id := fmt.Sprintf("s%d", i)
		at := from.Add(time.Duration(i) * 311 * time.Millisecond)
		user := ok(id, "v1", at, true, 400+float64(i%50), 100, 10, 30, 0.001)
		user.Captured, user.Prompt, user.Completion = true, "Where is the Eiffel Tower?", "It is in Paris, France."
		mirror := ok(id, "v2", at.Add(3*time.Millisecond), true, 600+float64(i%70), 150, 15, 30, 0.001)
		mirror.Bucket, mirror.Shadow, mirror.Prompt, mirror.Completion = user.Bucket, true, user.Prompt, "It is in Paris, France."
		if i%2 == 0 {
			mirror.Completion = "Sure! " + sim.BadAnswerMarker
		}
		recs = append(recs, user, mirror)
	}
	return recs
}

// The shadow judge grades the same pairs, and ShadowPairs reads the same
// pairs, latency ratios and judged differences, over a 2-shard cluster as
// over one server.
func TestShadowPairsOverAClusterEqualTheOnesOverOneServer(t *testing.T) {
	lone, servers, db, from, now, _ := loneAndCluster(t, shadowFixture)

	judgeSim, err := sim.New(sim.Profile{Version: "judge", Judge: true})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(judgeSim)
	defer srv.Close()
	pairs := func(conn driver.Conn) analyzer.ShadowPairs {
		store, err := quality.OpenScoreStore(context.Background(), conn, db)
		if err != nil {
			t.Fatal(err)
		}
		judge, err := quality.NewJudge(quality.JudgeOptions{Conn: conn, Store: store, Endpoint: srv.URL})
		if err != nil {
			t.Fatal(err)
		}
		sj, err := quality.NewShadowJudge(context.Background(), judge)
		if err != nil {
			t.Fatal(err)
		}
		for {
			n, err := sj.RunOnce(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				break
			}
		}
		p, err := New(conn, db).ShadowPairs(context.Background(), analyzer.ShadowWindow{Model: "m", Stable: "v1", Canary: "v2", From: from, To: now})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	loneP := pairs(chtest.Connect(t, lone))
	clusterP := pairs(chtest.Connect(t, servers[1]))
	if loneP.Mirrored != 400 || loneP.Paired != 400 || loneP.ScoreN != 400 || loneP.Losses < 150 {
		t.Fatalf("one server: %+v; want 400 mirrored, paired and judged pairs, about half lost by the canary", loneP)
	}
	// Sums over shards add in another order: the float moments agree to
	// rounding, everything else exactly.
	close := func(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(a)) }
	floats := func(p *analyzer.ShadowPairs) []*float64 {
		return []*float64{&p.ScoreDiffMean, &p.ScoreDiffVar, &p.LogRatioMean, &p.LogRatioVar}
	}
	a, b := loneP, clusterP
	fa, fb := floats(&a), floats(&b)
	for i := range fa {
		if !close(*fa[i], *fb[i]) {
			t.Fatalf("shadow pairs differ:\none server %+v\ncluster    %+v", loneP, clusterP)
		}
		*fa[i], *fb[i] = 0, 0
	}
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("shadow pairs differ:\none server %+v\ncluster    %+v", loneP, clusterP)
	}
}
