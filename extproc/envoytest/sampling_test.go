//go:build integration

package envoytest

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/extproc/envoyconfig"
	"github.com/llmcanary/llmcanary/internal/wire"
)

// hdrRoute selects one of the test routes below.
const hdrRoute = "x-test-route"

// perRoute is the ext_proc filter's setting for traffic to cluster, which
// serves version, measured at rate.
func perRoute(t testing.TB, rate float64, cluster, version string) map[string]*anypb.Any {
	t.Helper()
	pr, err := envoyconfig.PerRoute(rate, served(cluster, version), false)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]*anypb.Any{envoyconfig.FilterName: pr}
}

// rateHeader is the request header a route adds to the requests it
// measures at rate.
func rateHeader(rate float64) []*corev3.HeaderValueOption {
	return []*corev3.HeaderValueOption{{
		Header: &corev3.HeaderValue{Key: wire.HeaderSampleRate, Value: envoyconfig.FormatRate(rate)},
	}}
}

func versionHeader(v string) []*corev3.HeaderValueOption {
	return []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: wire.HeaderVersion, Value: v}}}
}

// headerRoute matches requests whose hdrRoute header is value and sends
// them to upstreamCluster with the ext_proc filter's per-route settings.
func headerRoute(value string, perFilter map[string]*anypb.Any, reqHeaders []*corev3.HeaderValueOption) *routev3.Route {
	r := defaultRoute()
	r.Match.Headers = []*routev3.HeaderMatcher{{
		Name:                 hdrRoute,
		HeaderMatchSpecifier: &routev3.HeaderMatcher_ExactMatch{ExactMatch: value},
	}}
	r.TypedPerFilterConfig = perFilter
	r.RequestHeadersToAdd = reqHeaders
	return r
}

// weightedRoute splits requests 50/50 by x-llmcanary-bucket between
// upstreamCluster (buckets ≡ 0..49 mod 100), whose ext_proc filter is off,
// and otherCluster (≡ 50..99), measured at rate 0.5 — the settings the
// control plane puts on a rollout's clusters.
func weightedRoute(t testing.TB, value string) *routev3.Route {
	r := headerRoute(value, nil, nil)
	r.Action = &routev3.Route_Route{Route: &routev3.RouteAction{
		ClusterSpecifier: &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{
			RandomValueSpecifier: &routev3.WeightedCluster_HeaderName{HeaderName: wire.HeaderBucket},
			Clusters: []*routev3.WeightedCluster_ClusterWeight{{
				Name:                 upstreamCluster,
				Weight:               wrapperspb.UInt32(50),
				TypedPerFilterConfig: perRoute(t, 0, upstreamCluster, metaVersion),
				ResponseHeadersToAdd: versionHeader(metaVersion),
			}, {
				Name:                 otherCluster,
				Weight:               wrapperspb.UInt32(50),
				TypedPerFilterConfig: perRoute(t, 0.5, otherCluster, otherVersion),
				RequestHeadersToAdd:  rateHeader(0.5),
				ResponseHeadersToAdd: versionHeader(otherVersion),
			}},
		}},
		Timeout: durationpb.New(30 * time.Second),
	}}
	r.ResponseHeadersToAdd = nil
	return r
}

// sampledRoutes are the routes of the sampling tests: "quarter" measured
// at 0.25, "off" not measured, "weighted" as weightedRoute, anything else
// measured at rate 1 (no per-route settings, and the rate header the
// control plane adds to measured requests).
func sampledRoutes(t testing.TB) []*routev3.Route {
	all := defaultRoute()
	all.RequestHeadersToAdd = rateHeader(1)
	return []*routev3.Route{
		headerRoute("quarter", perRoute(t, 0.25, upstreamCluster, metaVersion), rateHeader(0.25)),
		headerRoute("off", perRoute(t, 0, upstreamCluster, metaVersion), nil),
		weightedRoute(t, "weighted"),
		all,
	}
}

// send makes one streamed request on route with bucket and checks that it
// was served, by version when want is set.
func send(t *testing.T, ctx context.Context, url, route string, bucket int, wantVersion string) {
	t.Helper()
	hdr := map[string]string{hdrRoute: route, wire.HeaderBucket: strconv.Itoa(bucket), hdrTokens: "3"}
	code, version, err := completionVersion(ctx, url, hdr)
	if err != nil || code != 200 {
		t.Fatalf("route %s bucket %d: status %d, %v", route, bucket, code, err)
	}
	if wantVersion != "" && version != wantVersion {
		t.Fatalf("route %s bucket %d: served by %q, want %q", route, bucket, version, wantVersion)
	}
}

// recordsUntil waits for the record of the request with bucket marker,
// sent last, and returns every record that arrived by then: the streams
// of the requests before it ended before its own did.
func recordsUntil(t *testing.T, sink *memSink, marker uint64) []extproc.Record {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		sink.mu.Lock()
		recs := append([]extproc.Record(nil), sink.recs...)
		sink.mu.Unlock()
		for _, r := range recs {
			if r.Bucket == marker {
				return recs
			}
		}
		select {
		case <-sink.ch:
		case <-deadline:
			t.Fatalf("the marker request's record never arrived (%d records)", len(recs))
		}
	}
}

func TestEnvoyMeasuresARouteAtItsSampleRateAndNotAtAllWhenOff(t *testing.T) {
	svc := startService(t)
	env := startEnvoyWith(t, startUpstream(t), svc.addr, envoyOptions{filter: fastClose, routes: sampledRoutes(t)})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := 0; i < 4; i++ {
		send(t, ctx, env.withURL, "off", 200+i, "")
		send(t, ctx, env.withURL, "quarter", 100+i, "")
	}
	const marker = 300
	send(t, ctx, env.withURL, "", marker, "")
	byBucket := map[uint64]extproc.Record{}
	for _, r := range recordsUntil(t, svc.sink, marker) {
		byBucket[r.Bucket] = r
	}
	for b := uint64(200); b < 204; b++ {
		if _, ok := byBucket[b]; ok {
			t.Errorf("bucket %d went through the route with PerRoute(0), yet the service saw a stream", b)
		}
	}
	for b := uint64(100); b < 104; b++ {
		r, ok := byBucket[b]
		if !ok || r.SampleRate != 0.25 || r.Failure != "" || r.CompletionTokens != 3 {
			t.Errorf("bucket %d through PerRoute(0.25): record %v (rate %v), want a clean row at rate 0.25", b, ok, r.SampleRate)
		}
	}
	if r := byBucket[marker]; r.SampleRate != 1 {
		t.Errorf("a route without per-route settings: rate %v, want 1", r.SampleRate)
	}
}

// TestEnvoyHonoursPerRouteSettingsOnWeightedClusters checks what the
// control plane relies on: Envoy 1.37 applies the ext_proc filter's
// typed_per_filter_config set on a WeightedCluster.ClusterWeight for the
// cluster the bucket header picked — off for one, measured at 0.5 for the
// other — along with the cluster's own request and response headers.
func TestEnvoyHonoursPerRouteSettingsOnWeightedClusters(t *testing.T) {
	svc := startService(t)
	env := startEnvoyWith(t, startUpstream(t), svc.addr, envoyOptions{filter: fastClose, routes: sampledRoutes(t)})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var measured []int
	for i := 0; i < 20; i++ {
		bucket := 1000 + i*7 // 1000..1133: both halves of the split
		want := metaVersion
		if bucket%100 >= 50 {
			want = otherVersion
			measured = append(measured, bucket)
		}
		send(t, ctx, env.withURL, "weighted", bucket, want)
	}
	if len(measured) == 0 || len(measured) == 20 {
		t.Fatalf("the buckets do not cover both clusters: %v", measured)
	}
	const marker = 1199 // ≡ 99: the measured cluster
	send(t, ctx, env.withURL, "weighted", marker, otherVersion)
	recs := recordsUntil(t, svc.sink, marker)
	got := map[uint64]extproc.Record{}
	for _, r := range recs {
		got[r.Bucket] = r
		// The cluster, its version and prices come from the weighted
		// cluster's settings, which open the stream.
		wantCost := float64(r.CompletionTokens) / 1000 * priceOut
		if r.Cluster != otherCluster || r.SampleRate != 0.5 || r.CompletionTokens == 0 || math.Abs(r.CostUSD-wantCost) > 1e-12 {
			t.Errorf("bucket %d: a row from cluster %q at rate %v costing %v; only %s, at 0.5, is measured, priced %v",
				r.Bucket, r.Cluster, r.SampleRate, r.CostUSD, otherCluster, wantCost)
		}
	}
	for _, b := range measured {
		if _, ok := got[uint64(b)]; !ok {
			t.Errorf("bucket %d was served by %s (measured at 0.5) but has no row", b, otherCluster)
		}
	}
	t.Logf("%d requests, %d on the measured cluster: %d rows, all from %s at rate 0.5",
		21, len(measured)+1, len(recs), otherCluster)
}

// completionVersion is completion that also returns the served version.
func completionVersion(ctx context.Context, url string, hdr map[string]string) (int, string, error) {
	code, body, version, err := completionFull(ctx, url, hdr)
	if err == nil && code == 200 && len(body) == 0 {
		err = fmt.Errorf("empty body")
	}
	return code, version, err
}
