//go:build integration

package envoytest

import (
	"context"
	"slices"
	"testing"
	"time"

	xdscorev3 "github.com/cncf/xds/go/xds/core/v3"
	xdsmatcherv3 "github.com/cncf/xds/go/xds/type/matcher/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	mutationv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	grpcalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	matchingv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/matching/v3"
	skipv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/matcher/action/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	earlyhmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/early_header_mutation/header_mutation/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/extproc/envoyconfig"
	"github.com/llmcanary/llmcanary/internal/wire"
)

// CEL attributes the telemetry filter once asked Envoy for with each
// message: the reference the cheaper configurations are measured against.
var (
	celRequestAttributes = []string{
		"request.time", "xds.cluster_name",
		clusterMetaAttr(wire.MetaModel), clusterMetaAttr(wire.MetaVersion),
		clusterMetaAttr(wire.MetaPriceInputPer1K), clusterMetaAttr(wire.MetaPriceOutputPer1K),
	}
	celResponseAttributes = []string{
		"xds.cluster_name", "response.code",
		clusterMetaAttr(wire.MetaModel), clusterMetaAttr(wire.MetaVersion),
		clusterMetaAttr(wire.MetaPriceInputPer1K), clusterMetaAttr(wire.MetaPriceOutputPer1K),
	}
)

func clusterMetaAttr(key string) string {
	return "xds.cluster_metadata.filter_metadata." + wire.MetadataNamespace + "." + key
}

// withAttributes returns the ext_proc filter f asking Envoy for the given
// request and response attributes.
func withAttributes(t testing.TB, f *hcmv3.HttpFilter, req, resp []string) *hcmv3.HttpFilter {
	t.Helper()
	var cfg extprocfilterv3.ExternalProcessor
	if err := f.GetTypedConfig().UnmarshalTo(&cfg); err != nil {
		t.Fatal(err)
	}
	cfg.RequestAttributes, cfg.ResponseAttributes = req, resp
	return &hcmv3.HttpFilter{Name: f.Name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &cfg)}}
}

// costVariant is one listener of BenchmarkTelemetryEnvoyCPU.
type costVariant struct {
	name     string
	filters  []*hcmv3.HttpFilter // before the router
	perRoute map[string]*anypb.Any
	logs     []*accesslogv3.AccessLog
	timed    bool // each request yields a record
	early    []*corev3.TypedExtensionConfig
}

// skippedUnless wraps the HTTP filter f in an ExtensionWithMatcher that
// skips it for every request whose header is not "1": Envoy then still
// builds the filter but calls it for nothing.
func skippedUnless(t testing.TB, f *hcmv3.HttpFilter, header string) *hcmv3.HttpFilter {
	t.Helper()
	timed := &xdsmatcherv3.Matcher_MatcherList_Predicate{MatchType: &xdsmatcherv3.Matcher_MatcherList_Predicate_SinglePredicate_{
		SinglePredicate: &xdsmatcherv3.Matcher_MatcherList_Predicate_SinglePredicate{
			Input: &xdscorev3.TypedExtensionConfig{Name: "header", TypedConfig: mustAny(t, &matcherv3.HttpRequestHeaderMatchInput{HeaderName: header})},
			Matcher: &xdsmatcherv3.Matcher_MatcherList_Predicate_SinglePredicate_ValueMatch{
				ValueMatch: &xdsmatcherv3.StringMatcher{MatchPattern: &xdsmatcherv3.StringMatcher_Exact{Exact: "1"}},
			},
		},
	}}
	m := &xdsmatcherv3.Matcher{MatcherType: &xdsmatcherv3.Matcher_MatcherList_{MatcherList: &xdsmatcherv3.Matcher_MatcherList{
		Matchers: []*xdsmatcherv3.Matcher_MatcherList_FieldMatcher{{
			Predicate: &xdsmatcherv3.Matcher_MatcherList_Predicate{MatchType: &xdsmatcherv3.Matcher_MatcherList_Predicate_NotMatcher{NotMatcher: timed}},
			OnMatch: &xdsmatcherv3.Matcher_OnMatch{OnMatch: &xdsmatcherv3.Matcher_OnMatch_Action{
				Action: &xdscorev3.TypedExtensionConfig{Name: "skip", TypedConfig: mustAny(t, &skipv3.SkipFilter{})},
			}},
		}},
	}}}
	return &hcmv3.HttpFilter{Name: f.Name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &matchingv3.ExtensionWithMatcher{
		XdsMatcher:      m,
		ExtensionConfig: &corev3.TypedExtensionConfig{Name: f.Name, TypedConfig: f.GetTypedConfig()},
	})}}
}

// withEarly returns l with the early header mutations early.
func withEarly(t testing.TB, l *listenerv3.Listener, early []*corev3.TypedExtensionConfig) *listenerv3.Listener {
	t.Helper()
	if early == nil {
		return l
	}
	f := l.FilterChains[0].Filters[0]
	var hcm hcmv3.HttpConnectionManager
	if err := f.GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		t.Fatal(err)
	}
	hcm.EarlyHeaderMutationExtensions = early
	f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, &hcm)}
	return l
}

// BenchmarkTelemetryEnvoyCPU measures what the telemetry costs Envoy per
// request, configuration by configuration, all on one Envoy with one
// worker (as the gateway benchmark runs it), same route and upstream,
// non-streamed answers, 8 requests in flight: a request that is not timed
// with the ext_proc filter in its chain but switched off by the route,
// and with no ext_proc filter at all; a timed request with the CEL
// attributes Envoy evaluated for every stream before, with request.time
// only, and with none (what the stream needs opens it as gRPC metadata);
// the access log alone, and with four times its batch. A phase ends when
// the service has every access-log entry and record, so Envoy's sending is
// counted. 7 interleaved rounds; medians, minima, and the median of each
// round's difference to no telemetry.
//
//	go test -tags integration -run '^$' -bench TelemetryEnvoyCPU -benchtime 1x ./extproc/envoytest/
func BenchmarkTelemetryEnvoyCPU(b *testing.B) {
	upstream := startUpstream(b)
	logs := &logCounter{ch: make(chan struct{}, 1)}
	records := newMemSink()
	svc := startServiceWith(b, extproc.Options{Sink: records, RequestLog: logs}, records)

	f, err := envoyconfig.HTTPFilter(envoyconfig.FilterOptions{ClusterName: extprocCluster})
	if err != nil {
		b.Fatal(err)
	}
	al, err := envoyconfig.AccessLog(extprocCluster)
	if err != nil {
		b.Fatal(err)
	}
	log := []*accesslogv3.AccessLog{al}
	pr := func(rate float64, sv envoyconfig.Served) map[string]*anypb.Any {
		a, err := envoyconfig.PerRoute(rate, sv, false)
		if err != nil {
			b.Fatal(err)
		}
		return map[string]*anypb.Any{envoyconfig.FilterName: a}
	}
	sv := served(upstreamCluster, metaVersion)
	// The access log with four times Envoy's default batch.
	var bigBatch grpcalsv3.HttpGrpcAccessLogConfig
	if err := al.GetTypedConfig().UnmarshalTo(&bigBatch); err != nil {
		b.Fatal(err)
	}
	bigBatch.CommonConfig.BufferSizeBytes = wrapperspb.UInt32(4 * envoyconfig.AccessLogBufferBytes)
	bigLog := []*accesslogv3.AccessLog{{Name: al.Name, ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: mustAny(b, &bigBatch)}}}
	startHeader := []*corev3.TypedExtensionConfig{{
		Name: "start", TypedConfig: mustAny(b, &earlyhmv3.HeaderMutation{Mutations: []*mutationv3.HeaderMutation{{
			Action: &mutationv3.HeaderMutation_Append{Append: &corev3.HeaderValueOption{
				Header:       &corev3.HeaderValue{Key: "x-llmcanary-start", Value: "%START_TIME(%s.%6f)%"},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
			}},
		}}}),
	}}
	variants := []costVariant{
		{name: "untimed-filter-off-by-route", filters: []*hcmv3.HttpFilter{f}, perRoute: pr(0, sv), logs: log},
		{name: "untimed-no-filter", logs: log},
		{name: "untimed-no-filter-64KiB-log", logs: bigLog},
		{name: "timed-12-cel-attributes", filters: []*hcmv3.HttpFilter{withAttributes(b, f, celRequestAttributes, celResponseAttributes)}, perRoute: pr(1, envoyconfig.Served{}), logs: log, timed: true},
		{name: "timed-request-time-only", filters: []*hcmv3.HttpFilter{withAttributes(b, f, []string{"request.time"}, nil)}, perRoute: pr(1, sv), logs: log, timed: true},
		{name: "timed-no-attributes", filters: []*hcmv3.HttpFilter{f}, perRoute: pr(1, sv), logs: log, timed: true},
		{name: "no-telemetry"},
		{name: "untimed-no-filter-start-header", logs: log, early: startHeader},
		{name: "untimed-filter-skipped-by-matcher", filters: []*hcmv3.HttpFilter{skippedUnless(b, f, "x-llmcanary-timed")}, logs: log},
		{name: "timed-no-attributes-start-header", filters: []*hcmv3.HttpFilter{f}, perRoute: pr(1, sv), logs: log, timed: true, early: startHeader},
	}

	p, urls := runListeners(b, 1, len(variants), func(i int, port uint32) *listenerv3.Listener {
		r := defaultRoute()
		r.TypedPerFilterConfig = variants[i].perRoute
		return withEarly(b, listener(b, variants[i].name, port, variants[i].filters, []*routev3.Route{r}, variants[i].logs), variants[i].early)
	}, versionCluster(b, upstreamCluster, metaVersion, upstream), envoyconfig.Cluster(extprocCluster, svc.addr))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	hdr := map[string]string{hdrMode: "json", hdrTokens: "16", wire.HeaderBucket: "123"}
	logged, timed := 0, 0
	phase := func(i, n int) float64 {
		return envoyCPUPerRequest(b, p.Pid(), n, func() {
			if _, _, err := load(ctx, urls[i], n, 8, hdr); err != nil {
				b.Fatal(err)
			}
			if variants[i].logs != nil {
				logged += n
				logs.waitFor(b, logged)
			}
			if !variants[i].timed {
				return
			}
			timed += n
			recs := records.wait(b, timed, time.Minute)
			r := recs[len(recs)-1]
			// The service reads no attributes: the reference configuration's
			// rows are labelled from the headers only.
			labelled := r.Cluster == upstreamCluster && r.CostUSD > 0 || variants[i].name == "timed-12-cel-attributes"
			if r.Version != headerVersion || r.Status != 200 || !labelled {
				b.Fatalf("%s: record %+v", variants[i].name, r)
			}
		})
	}
	for i := range variants {
		phase(i, 400)
	}
	const rounds, perPhase = 7, 4000
	noTelemetry := slices.IndexFunc(variants, func(v costVariant) bool { return v.name == "no-telemetry" })
	for range b.N {
		cpu := interleaved(rounds, len(variants), func(j int) float64 { return phase(j, perPhase) })
		for j, v := range variants {
			// Rounds are interleaved, so a round's difference to no
			// telemetry cancels the machine's drift between rounds.
			diff := make([]float64, rounds)
			for r := range rounds {
				diff[r] = cpu[j][r] - cpu[noTelemetry][r]
			}
			m, d := median(cpu[j]), median(diff)
			b.ReportMetric(m, "µs/req-"+v.name)
			b.Logf("%-34s Envoy CPU µs per request: median %6.1f, min %6.1f; over no telemetry, median of the rounds' differences %+6.1f %.1f",
				v.name, m, slices.Min(cpu[j]), d, cpu[j])
		}
	}
}
