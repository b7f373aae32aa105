//go:build integration

package envoytest

import (
	"context"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	luav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/lua/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/llmcanary/llmcanary/extproc/envoyconfig"
	"github.com/llmcanary/llmcanary/internal/wire"
)

// TestEnvoyBuildsTheFilterChainFromTheRouteBeforeAFilterReroutes checks
// what keeping the telemetry filter out of an untimed request's chain
// would rest on. The filter is disabled in the connection manager and
// enabled by one route ("timed") through a route FilterConfig; a filter
// ahead of it (Lua here, the wasm filter in the gateway) moves the request
// from the route it arrived on to "timed" and clears the route cache, as
// the wasm filter does once it has read the model from the body. Envoy
// 1.37 creates a request's filter chain once, from the route its headers
// matched on arrival, so the re-routed request is never timed, while one
// that arrives on "timed" is: the gateway's requests all arrive on the
// route of an unknown model, so the chain cannot depend on the route they
// end on.
func TestEnvoyBuildsTheFilterChainFromTheRouteBeforeAFilterReroutes(t *testing.T) {
	svc := startService(t)
	reroute := &hcmv3.HttpFilter{Name: "envoy.filters.http.lua", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &luav3.Lua{
		DefaultSourceCode: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: `
function envoy_on_request(h)
  if h:headers():get("x-test-reroute") ~= nil then
    h:headers():replace("` + hdrRoute + `", "timed")
    h:clearRouteCache()
  end
end`}},
	})}}
	telemetry, err := envoyconfig.HTTPFilter(envoyconfig.FilterOptions{ClusterName: extprocCluster, DeferredCloseTimeout: fastClose.DeferredCloseTimeout})
	if err != nil {
		t.Fatal(err)
	}
	telemetry.Disabled = true
	timedCfg, err := envoyconfig.PerRoute(1, served(upstreamCluster, metaVersion), false)
	if err != nil {
		t.Fatal(err)
	}
	enable := mustAny(t, &routev3.FilterConfig{Config: timedCfg})
	timed := headerRoute("timed", map[string]*anypb.Any{envoyconfig.FilterName: enable}, nil)
	timed.ResponseHeadersToAdd = versionHeader("timed-route") // shows which route served
	other := defaultRoute()
	other.TypedPerFilterConfig = nil
	env := startEnvoyWith(t, startUpstream(t), svc.addr, envoyOptions{
		filter: fastClose, filters: []*hcmv3.HttpFilter{reroute, telemetry}, routes: []*routev3.Route{timed, other},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	send(t, ctx, env.withURL, "timed", 1, "")                                    // arrives on "timed"
	code, _, version, err := completionFull(ctx, env.withURL, map[string]string{ // arrives on the default route, moved to "timed"
		"x-test-reroute": "1", wire.HeaderBucket: "2", hdrTokens: "3",
	})
	if err != nil || code != 200 || version != "timed-route" {
		t.Fatalf("re-routed request: %d %v, served by the route announcing %q; want the timed route's", code, err, version)
	}
	send(t, ctx, env.withURL, "timed", 3, "") // a marker after it
	recs := recordsUntil(t, svc.sink, 3)
	got := map[uint64]bool{}
	for _, r := range recs {
		got[r.Bucket] = true
	}
	if !got[1] || !got[3] {
		t.Fatalf("requests that arrived on the route enabling the filter were not timed: %v", got)
	}
	if got[2] {
		t.Fatalf("the re-routed request was timed: Envoy 1.37 now builds the chain from the final route, so untimed requests could leave the telemetry filter out of their chain")
	}
}
