//go:build integration

package envoytest

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/extproc/chwriter"
	"github.com/llmcanary/llmcanary/internal/procs/chtest"
	"github.com/llmcanary/llmcanary/internal/wire"
)

func TestMain(m *testing.M) { chtest.Main(m) }

// directRoute answers requests whose hdrRoute header is "direct" itself,
// as the control plane answers GET /v1/models.
func directRoute() *routev3.Route {
	r := headerRoute("direct", nil, nil)
	r.Action = &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{
		Status: 200,
		Body:   &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: `{"object":"list","data":[]}`}},
	}}
	r.ResponseHeadersToAdd = nil
	return r
}

// downRoute sends requests whose hdrRoute header is "down" to downCluster,
// whose pool refuses connections; it measures them all.
func downRoute() *routev3.Route {
	r := headerRoute("down", nil, rateHeader(1))
	r.Action = &routev3.Route_Route{Route: &routev3.RouteAction{
		ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: downCluster},
		Timeout:          durationpb.New(5 * time.Second),
	}}
	r.ResponseHeadersToAdd = versionHeader(downVersion)
	return r
}

// logRow is a request_log row as the test reads it.
type logRow struct {
	requestID, model, version, cluster, path, flags, details string
	status                                                   uint16
	durationMs, sampleRate                                   float64
	bytesOut                                                 uint64
	forced, gateway                                          uint8
}

// TestEnvoyRecordsEveryRequestInTheRequestLog sends every kind of request
// through a real Envoy whose access log goes to the service, with the
// ClickHouse writer as its sink, and reads request_log back from a real
// ClickHouse: one row per request, measured or not, with what each was.
func TestEnvoyRecordsEveryRequestInTheRequestLog(t *testing.T) {
	ch := chtest.Shared(t)
	db := chtest.NewDatabase()
	w, err := chwriter.New(context.Background(), chwriter.Options{
		Addr: ch.Addr, Database: db, SpoolDir: t.TempDir(), FlushInterval: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close(context.Background()) })
	svc := startServiceWith(t, extproc.Options{Sink: w}, nil)
	routes := append([]*routev3.Route{directRoute(), downRoute()}, sampledRoutes(t)...)
	env := startEnvoyWith(t, startUpstream(t), svc.addr, envoyOptions{filter: fastClose, routes: routes, accessLog: true})

	type request struct {
		url      string
		hdr      map[string]string
		want     logRow
		measured bool // it has a requests row too
	}
	const model = "llama"
	h := func(bucket int, kv ...string) map[string]string {
		m := map[string]string{wire.HeaderBucket: strconv.Itoa(bucket), wire.HeaderModel: model, hdrTokens: "4"}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	served := func(version, cluster string, rate float64) logRow {
		return logRow{model: model, version: version, cluster: cluster, path: "/v1/chat/completions", status: 200, details: "via_upstream", sampleRate: rate}
	}
	requests := map[int]request{
		1: {env.withURL, h(1), served(headerVersion, upstreamCluster, 1), true},
		2: {env.withURL, h(2, hdrRoute, "quarter"), served(headerVersion, upstreamCluster, 0.25), true},
		3: {env.withURL, h(3, hdrRoute, "off"), served(headerVersion, upstreamCluster, 0), false},
		4: {env.withURL, h(1010, hdrRoute, "weighted"), served(metaVersion, upstreamCluster, 0), false},
		5: {env.withURL, h(1060, hdrRoute, "weighted"), served(otherVersion, otherCluster, 0.5), true},
		6: {env.loggedURL, h(6), served(headerVersion, upstreamCluster, 0), false},
		7: {env.withURL, h(7, wire.HeaderForce, "v7"), func() logRow { r := served(headerVersion, upstreamCluster, 1); r.forced = 1; return r }(), true},
		8: {env.withURL, h(8, hdrMode, "500"), func() logRow { r := served(headerVersion, upstreamCluster, 1); r.status = 500; return r }(), true},
		9: {env.withURL, h(9, hdrRoute, "direct"), logRow{model: model, path: "/v1/chat/completions", status: 200, details: wire.DetailsDirectResponse, gateway: 1}, false},
		// The router's own 503 still names the version: the route's
		// response headers apply to it.
		10: {env.withURL, h(10, hdrRoute, "down"), logRow{model: model, version: downVersion, cluster: downCluster, path: "/v1/chat/completions", status: 503,
			flags: "UF", details: "upstream_reset_before_response_started{remote_connection_failure", sampleRate: 1}, true},
		// The pool cutting its answer mid-stream keeps the 200 already
		// sent; the flag and the details say what happened.
		11: {env.withURL, h(11, hdrMode, "reset", hdrTokens, "6", hdrITL, "5"), func() logRow {
			r := served(headerVersion, upstreamCluster, 1)
			r.details = "upstream_reset_after_response_started{"
			return r
		}(), true},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	buckets := map[uint64]int{}
	measured := 0
	for n, r := range requests {
		completion(ctx, r.url, r.hdr) // the reset request fails on purpose
		b, _ := strconv.ParseUint(r.hdr[wire.HeaderBucket], 10, 64)
		buckets[b] = n
		if r.measured {
			measured++
		}
	}
	// Every request a route measures has a requests row, and no other has.
	waitForRows(t, func() bool {
		return w.LogStats().Written >= uint64(len(requests)) && w.Stats().Written >= uint64(measured)
	})

	conn := chtest.Connect(t, ch)
	rows, err := conn.Query(ctx, fmt.Sprintf(`SELECT request_id, model, version, cluster, path, response_flags, details,
		status, duration_ms, sample_rate, response_bytes, forced, gateway, bucket FROM %s.%s`, db, wire.TableRequestLog))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[int]logRow{}
	for rows.Next() {
		var r logRow
		var bucket uint64
		if err := rows.Scan(&r.requestID, &r.model, &r.version, &r.cluster, &r.path, &r.flags, &r.details,
			&r.status, &r.durationMs, &r.sampleRate, &r.bytesOut, &r.forced, &r.gateway, &bucket); err != nil {
			t.Fatal(err)
		}
		n, ok := buckets[bucket]
		if !ok {
			t.Fatalf("a row for bucket %d, which no request had", bucket)
		}
		if _, dup := got[n]; dup {
			t.Fatalf("request %d has two rows", n)
		}
		got[n] = r
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for n, r := range requests {
		g, ok := got[n]
		if !ok {
			t.Errorf("request %d (%v) has no request_log row", n, r.hdr)
			continue
		}
		if g.requestID == "" || g.durationMs <= 0 {
			t.Errorf("request %d: id %q duration %v ms", n, g.requestID, g.durationMs)
		}
		if g.status == 200 && g.bytesOut == 0 {
			t.Errorf("request %d: 200 with no response bytes", n)
		}
		g.requestID, g.durationMs, g.bytesOut = "", 0, 0
		if strings.HasSuffix(r.want.details, "{") || strings.HasSuffix(r.want.details, "failure") {
			// Envoy appends the transport's own words; the prefix is the contract.
			if strings.HasPrefix(g.details, r.want.details) {
				g.details = r.want.details
			}
		}
		if n == 11 {
			// An upstream that drops the connection mid-body: Envoy 1.37
			// flags UPE (protocol error: the chunked body ended early) or
			// UR/UC, depending on how the close reaches it.
			if f := g.flags; f == "UR" || f == "UC" || f == "UPE" {
				g.flags = ""
			}
		}
		if g != r.want {
			t.Errorf("request %d:\n got %+v\nwant %+v", n, g, r.want)
		}
	}
	// A measured request's two rows share its request id.
	var joined uint64
	q := fmt.Sprintf(`SELECT count() FROM %[1]s.%[2]s AS l ANY INNER JOIN %[1]s.%[3]s AS r USING request_id WHERE l.sample_rate > 0`,
		db, wire.TableRequestLog, wire.TableRequests)
	if err := conn.QueryRow(ctx, q).Scan(&joined); err != nil {
		t.Fatal(err)
	}
	var requestRows uint64
	if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT count() FROM %s.%s", db, wire.TableRequests)).Scan(&requestRows); err != nil {
		t.Fatal(err)
	}
	if joined != uint64(measured) || requestRows != uint64(measured) {
		t.Errorf("%d measured requests have both rows and requests has %d rows, want %d", joined, requestRows, measured)
		rs, err := conn.Query(ctx, fmt.Sprintf("SELECT bucket, request_id, failure, status FROM %s.%s", db, wire.TableRequests))
		if err != nil {
			t.Fatal(err)
		}
		defer rs.Close()
		for rs.Next() {
			var bucket uint64
			var id, failure string
			var status uint16
			if err := rs.Scan(&bucket, &id, &failure, &status); err != nil {
				t.Fatal(err)
			}
			t.Logf("requests row: bucket %d id %s failure %q status %d", bucket, id, failure, status)
		}
	}
	{
		var failure string
		if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT failure FROM %s.%s WHERE bucket = 11", db, wire.TableRequests)).Scan(&failure); err != nil {
			t.Fatal(err)
		}
		if failure != extproc.FailureUpstreamReset {
			t.Errorf("the reset request's failure is %q, want %q (its cause from the same access log)", failure, extproc.FailureUpstreamReset)
		}
	}
	if t.Failed() {
		var lines []string
		for n, g := range got {
			lines = append(lines, fmt.Sprintf("%d: %+v", n, g))
		}
		t.Logf("rows:\n%s", strings.Join(lines, "\n"))
	}
}

// waitForRows polls cond until it holds: the rows reach ClickHouse a
// flush interval after the access log's batch reached the service.
func waitForRows(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("the rows never reached ClickHouse")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
