package xds

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	celv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/filters/cel/v3"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmcanary/llmcanary/extproc/envoyconfig"
	"github.com/llmcanary/llmcanary/internal/wire"
)

// Gateway holds the static shape of the Envoy listener: what does not change
// with a rollout. The control plane's options fill it.
type Gateway struct {
	ListenerName    string
	ListenerAddress string
	ListenerPort    uint32
	// StreamIdleTimeout ends a stream that has been silent this long. There
	// is no overall request timeout: a long generation must not be cut.
	StreamIdleTimeout time.Duration
	ConnectTimeout    time.Duration
	// UpstreamIdleTimeout closes pooled upstream connections unused this long.
	UpstreamIdleTimeout time.Duration
	HealthCheckInterval time.Duration
	// Extensions add HTTP filters before the router, in order (the wasm
	// filter must come before ext_proc so telemetry sees the bucket and the
	// model it set).
	Extensions []Extension
}

// Extension is an optional HTTP filter of the gateway together with the
// clusters it needs (ext_proc's gRPC service, for example).
type Extension interface {
	// Name identifies the extension in errors and golden files.
	Name() string
	// HTTPFilter returns the filter for the current state.
	HTTPFilter(s *State) (*hcmv3.HttpFilter, error)
	// Clusters returns clusters the filter needs, or none.
	Clusters() []*clusterv3.Cluster
	// VerifiesForce reports whether the filter strips x-llmcanary-force
	// unless an operator key came with it. Only then does the route table
	// honour the header; without such a filter it would let any client pick
	// its version.
	VerifiesForce() bool
}

// Optional abilities of an Extension. Translate and Start look for them
// with a type assertion; an extension that lacks one simply does not take
// part in what it governs.
type (
	// AccessLogger is an Extension that adds access logs to the listener
	// (ext_proc's reset-cause stream).
	AccessLogger interface {
		AccessLogs() ([]*accesslogv3.AccessLog, error)
	}
	// BufferLimiter is an Extension that needs the listener to buffer at
	// least this many bytes per connection (the wasm filter holds a body).
	BufferLimiter interface {
		PerConnectionBufferLimit() uint32
	}
	// KeyReloader is an Extension whose keys live in a file: ReloadKeys
	// reads it again and reports whether the accepted keys changed, so the
	// control plane republishes (force keys rotated without a restart).
	KeyReloader interface {
		ReloadKeys() (bool, error)
	}
)

var (
	_ Extension     = (*wasmExtension)(nil)
	_ BufferLimiter = (*wasmExtension)(nil)
	_ KeyReloader   = (*wasmExtension)(nil)
	_ Extension     = (*extProcExtension)(nil)
	_ AccessLogger  = (*extProcExtension)(nil)
)

// DefaultGateway returns the gateway settings used when none are given.
func DefaultGateway() Gateway {
	return Gateway{
		ListenerName:        "llmcanary",
		ListenerAddress:     "0.0.0.0",
		ListenerPort:        10000,
		StreamIdleTimeout:   5 * time.Minute,
		ConnectTimeout:      5 * time.Second,
		UpstreamIdleTimeout: 5 * time.Minute,
		HealthCheckInterval: 5 * time.Second,
	}
}

// RouteConfigName is the name of the single route configuration, fetched by
// the listener over RDS.
const RouteConfigName = "llmcanary"

// Resources are the Envoy resources of one snapshot.
type Resources struct {
	Listeners []*listenerv3.Listener
	Routes    []*routev3.RouteConfiguration
	Clusters  []*clusterv3.Cluster
	Endpoints []*endpointv3.ClusterLoadAssignment
}

// ClusterName names the Envoy cluster of one model version.
func ClusterName(model, version string) string {
	return "llm|" + model + "|" + version
}

// Translate turns the desired state into Envoy resources. It is pure: the
// same state and gateway always give the same resources, in the same order.
func Translate(s *State, g Gateway) (*Resources, error) {
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("translate: %w", err)
	}
	r := &Resources{}
	l, err := listener(s, g)
	if err != nil {
		return nil, err
	}
	r.Listeners = append(r.Listeners, l)
	rc, err := routes(s, g)
	if err != nil {
		return nil, err
	}
	r.Routes = append(r.Routes, rc)
	for _, name := range s.ModelNames() {
		m := s.Models[name]
		for _, v := range m.Ordered() {
			c, eds := cluster(m, v, g)
			r.Clusters = append(r.Clusters, c)
			if eds != nil {
				r.Endpoints = append(r.Endpoints, eds)
			}
		}
		for _, v := range shadowVersions(m, g) {
			c, eds, err := shadowCluster(m, v, g)
			if err != nil {
				return nil, err
			}
			r.Clusters = append(r.Clusters, c)
			if eds != nil {
				r.Endpoints = append(r.Endpoints, eds)
			}
		}
	}
	for _, ext := range g.Extensions {
		r.Clusters = append(r.Clusters, ext.Clusters()...)
	}
	return r, nil
}

func listener(s *State, g Gateway) (*listenerv3.Listener, error) {
	var filters []*hcmv3.HttpFilter
	for _, ext := range g.Extensions {
		f, err := ext.HTTPFilter(s)
		if err != nil {
			return nil, fmt.Errorf("extension %s: %w", ext.Name(), err)
		}
		filters = append(filters, f)
	}
	filters = append(filters, &hcmv3.HttpFilter{
		Name:       "envoy.filters.http.router",
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})},
	})
	var logs []*accesslogv3.AccessLog
	for _, ext := range g.Extensions {
		if a, ok := ext.(AccessLogger); ok {
			l, err := a.AccessLogs()
			if err != nil {
				return nil, fmt.Errorf("extension %s: %w", ext.Name(), err)
			}
			logs = append(logs, l...)
		}
	}
	manager := &hcmv3.HttpConnectionManager{
		AccessLog:  logs,
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		StatPrefix: "llmcanary",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			RouteConfigName: RouteConfigName,
			ConfigSource:    adsSource(),
		}},
		HttpFilters:       filters,
		StreamIdleTimeout: durationpb.New(g.StreamIdleTimeout),
		// No overall limit on a request: generations stream for minutes.
		RequestTimeout: durationpb.New(0),
		// Every response carries its request id, the key for feedback. A
		// client's own id is kept so it can correlate without reading our
		// headers; the wasm filter replaces one that is not well-formed.
		GenerateRequestId:            wrapperspb.Bool(true),
		PreserveExternalRequestId:    true,
		AlwaysSetRequestIdInResponse: true,
		LocalReplyConfig:             localReplies(),
		UseRemoteAddress:             wrapperspb.Bool(true),
		NormalizePath:                wrapperspb.Bool(true),
		MergeSlashes:                 true,
		PathWithEscapedSlashesAction: hcmv3.HttpConnectionManager_UNESCAPE_AND_REDIRECT,
	}
	l := &listenerv3.Listener{
		Name: g.ListenerName,
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address:       g.ListenerAddress,
			PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: g.ListenerPort},
		}}},
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       "envoy.filters.network.http_connection_manager",
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(manager)},
			}},
		}},
	}
	for _, ext := range g.Extensions {
		if b, ok := ext.(BufferLimiter); ok {
			l.PerConnectionBufferLimitBytes = wrapperspb.UInt32(max(b.PerConnectionBufferLimit(), l.GetPerConnectionBufferLimitBytes().GetValue()))
		}
	}
	return l, nil
}

func routes(s *State, g Gateway) (*routev3.RouteConfiguration, error) {
	trustForce := false
	for _, ext := range g.Extensions {
		trustForce = trustForce || ext.VerifiesForce()
	}
	ms := measuringOf(g)
	var rs []*routev3.Route
	rs = append(rs, modelsRoute(s))
	rs = append(rs, methodNotAllowed("/v1/models", "GET"))
	for _, p := range apiPaths {
		rs = append(rs, methodNotAllowed(p, "POST"))
	}
	for _, name := range s.ModelNames() {
		m := s.Models[name]
		modelHdr := exactHeader(wire.HeaderModel, m.Name)
		if trustForce {
			for _, v := range m.Ordered() {
				rs = append(rs, versionRoute(m, v.Name, "force",
					modelHdr, exactHeader(wire.HeaderForce, v.Name)))
			}
			rs = append(rs, unknownForcedVersion(m, modelHdr))
		}
		// Exclusion comes before the category overrides, which may name a
		// canary; opt-in after them, which are the operator's explicit
		// choice for a kind of request.
		if r := excludedRoute(m, modelHdr); r != nil {
			rs = append(rs, r)
		}
		for _, cat := range sortedKeys(m.CategoryOverrides) {
			rs = append(rs, versionRoute(m, m.CategoryOverrides[cat], "category:"+cat,
				modelHdr, exactHeader(wire.HeaderCategory, cat)))
		}
		if r := optInRoute(m, modelHdr); r != nil {
			rs = append(rs, r)
		}
		wr, err := weightedRoutes(m, modelHdr, ms)
		if err != nil {
			return nil, err
		}
		rs = append(rs, wr...)
	}
	rs = append(rs, &routev3.Route{
		Name:  "unknown-model",
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{
			Status: 404,
			Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: openAIError(
				"The model does not exist or was not given.", "invalid_request_error", "model_not_found")}},
		}},
		ResponseHeadersToAdd: []*corev3.HeaderValueOption{contentTypeJSON()},
		// The revision travels with the routes so anyone can read from an
		// Envoy's config dump which desired state it serves (delta xDS
		// versions are hashes, not revisions).
		Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
			wire.MetadataNamespace: {Fields: map[string]*structpb.Value{
				"revision": structpb.NewStringValue(strconv.FormatUint(s.Revision, 10)),
			}},
		}},
	})
	served := map[string]envoyconfig.Served{}
	for _, m := range s.Models {
		for _, v := range m.Ordered() {
			sv := servedBy(m, v)
			served[sv.Cluster] = sv
		}
	}
	if err := ms.apply(rs, served); err != nil {
		return nil, err
	}
	return &routev3.RouteConfiguration{
		Name: RouteConfigName,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    "llmcanary",
			Domains: []string{"*"},
			Routes:  rs,
			// Defence in depth: the operator key never reaches a pool, even
			// when no filter that checks it is configured.
			RequestHeadersToRemove: []string{wire.HeaderKey},
		}},
	}, nil
}

// apiPaths are the OpenAI endpoints the gateway forwards to pools, all POST.
var apiPaths = []string{"/v1/chat/completions", "/v1/completions"}

// methodNotAllowed answers 405 with Allow for any other method on path, at
// the gateway: a GET on a POST endpoint is the client's mistake, not a
// missing model, and must never reach a pool.
func methodNotAllowed(path, allow string) *routev3.Route {
	m := exactHeader(":method", allow)
	m.InvertMatch = true
	return &routev3.Route{
		Name:  "method-not-allowed:" + path,
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: path}, Headers: []*routev3.HeaderMatcher{m}},
		Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{
			Status: 405,
			Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: openAIError(
				path+" accepts only "+allow+".", "invalid_request_error", "method_not_allowed")}},
		}},
		ResponseHeadersToAdd: []*corev3.HeaderValueOption{contentTypeJSON(), {
			Header:       &corev3.HeaderValue{Key: "allow", Value: allow},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		}},
	}
}

// unknownForcedVersion answers a forced version the model does not have
// with a 404 instead of letting the weighted route serve it: the operator
// asked for one version and must not silently get another. It follows the
// model's force routes, so only a verified force header that named none of
// them gets here.
func unknownForcedVersion(m *Model, modelHdr *routev3.HeaderMatcher) *routev3.Route {
	return &routev3.Route{
		Name: m.Name + "/force:unknown",
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}, Headers: []*routev3.HeaderMatcher{
			modelHdr, {Name: wire.HeaderForce, HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}},
		}},
		Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{
			Status: 404,
			Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: openAIError(
				"The version named in "+wire.HeaderForce+" does not exist for model `"+m.Name+"`.", "invalid_request_error", "version_not_found")}},
		}},
		ResponseHeadersToAdd: []*corev3.HeaderValueOption{contentTypeJSON()},
	}
}

// modelsRoute answers GET /v1/models at the gateway from the desired state,
// as an OpenAI-compatible list.
func modelsRoute(s *State) *routev3.Route {
	type entry struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		OwnedBy string `json:"owned_by"`
	}
	list := struct {
		Object string  `json:"object"`
		Data   []entry `json:"data"`
	}{Object: "list", Data: []entry{}}
	for _, n := range s.ModelNames() {
		list.Data = append(list.Data, entry{ID: n, Object: "model", OwnedBy: "llmcanary"})
	}
	body, _ := json.Marshal(list)
	return &routev3.Route{
		Name: "models",
		Match: &routev3.RouteMatch{
			PathSpecifier: &routev3.RouteMatch_Path{Path: "/v1/models"},
			Headers:       []*routev3.HeaderMatcher{exactHeader(":method", "GET")},
		},
		Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{
			Status: 200,
			Body:   &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: string(body)}},
		}},
		ResponseHeadersToAdd: []*corev3.HeaderValueOption{contentTypeJSON()},
	}
}

func versionRoute(m *Model, version, why string, headers ...*routev3.HeaderMatcher) *routev3.Route {
	return &routev3.Route{
		Name:  m.Name + "/" + why,
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}, Headers: headers},
		Action: &routev3.Route_Route{Route: routeAction(&routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: ClusterName(m.Name, version)},
		})},
		ResponseHeadersToAdd: []*corev3.HeaderValueOption{versionHeader(version)},
	}
}

// weightedRoutes returns the route that splits m's traffic by bucket, or
// two when only part of stable's users are measured: the first matches the
// measured users by their sample key and the second takes the rest. Both
// list the same clusters with the same weights and read the same bucket,
// so a request goes to the same version whichever matches; they differ
// only in whether the telemetry filter runs for stable.
func weightedRoutes(m *Model, modelHdr *routev3.HeaderMatcher, ms measuring) ([]*routev3.Route, error) {
	smp := ms.sampling(m)
	if smp == nil {
		r, err := weightedRoute(m, "weighted", ms, nil, []*routev3.HeaderMatcher{modelHdr})
		if err != nil {
			return nil, err
		}
		r.GetRoute().RequestMirrorPolicies = mirrorPolicy(m, 1)
		return []*routev3.Route{r}, nil
	}
	if smp.Key == "" {
		r, err := weightedRoute(m, "weighted", ms, []float64{smp.StableRate, smp.CanaryRate}, []*routev3.HeaderMatcher{modelHdr})
		if err != nil {
			return nil, err
		}
		r.GetRoute().RequestMirrorPolicies = mirrorPolicy(m, smp.StableRate)
		return []*routev3.Route{r}, nil
	}
	keyHdr := &routev3.HeaderMatcher{Name: smp.Key, HeaderMatchSpecifier: &routev3.HeaderMatcher_RangeMatch{
		RangeMatch: &typev3.Int64Range{Start: 0, End: smp.threshold()},
	}}
	// Only the measured users' requests are mirrored, at the share that
	// makes the model's mirrored share the shadow's percent (SamplingOf
	// measures at least that share).
	sampled, err := weightedRoute(m, "weighted:sampled", ms, []float64{smp.StableRate, smp.CanaryRate}, []*routev3.HeaderMatcher{modelHdr, keyHdr})
	if err != nil {
		return nil, err
	}
	sampled.GetRoute().RequestMirrorPolicies = mirrorPolicy(m, smp.StableRate)
	rest, err := weightedRoute(m, "weighted", ms, []float64{0, smp.CanaryRate}, []*routev3.HeaderMatcher{modelHdr})
	if err != nil {
		return nil, err
	}
	return []*routev3.Route{sampled, rest}, nil
}

// weightedRoute splits m's traffic by bucket. rates, when given, hold the
// rate stable is measured at, then the one every other version shares;
// each cluster then carries the telemetry filter's setting for its rate
// and what it serves. Stable's answers to mirrored requests are kept for
// the judge.
//
// The clusters follow m's Layout: while canaries hold lanes, stable's
// cluster is listed once for each part of the range it serves.
func weightedRoute(m *Model, why string, ms measuring, rates []float64, headers []*routev3.HeaderMatcher) (*routev3.Route, error) {
	wc := &routev3.WeightedCluster{RandomValueSpecifier: &routev3.WeightedCluster_HeaderName{HeaderName: wire.HeaderBucket}}
	for _, seg := range m.Layout() {
		v, _ := m.Version(seg.Version)
		stable := v.Name == m.Stable
		cw := &routev3.WeightedCluster_ClusterWeight{
			Name:                 ClusterName(m.Name, v.Name),
			Weight:               wrapperspb.UInt32(seg.To - seg.From),
			ResponseHeadersToAdd: []*corev3.HeaderValueOption{versionHeader(v.Name)},
		}
		if rates != nil {
			rate := rates[1]
			if stable {
				rate = rates[0]
			}
			cfg, err := ms.perRoute(rate, servedBy(m, v), stable && m.Shadow.Mirrors())
			if err != nil {
				return nil, err
			}
			cw.TypedPerFilterConfig = cfg
			cw.RequestHeadersToAdd = sampleRateHeader(rate)
			// A client's own value never reaches the access log.
			cw.RequestHeadersToRemove = []string{wire.HeaderSampleRate}
		}
		wc.Clusters = append(wc.Clusters, cw)
	}
	return &routev3.Route{
		Name:  m.Name + "/" + why,
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}, Headers: headers},
		Action: &routev3.Route_Route{Route: routeAction(&routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_WeightedClusters{WeightedClusters: wc},
		})},
	}, nil
}

// sampleRateHeader tells Envoy's access log that a request was measured,
// and at which rate; none for a request that was not.
func sampleRateHeader(rate float64) []*corev3.HeaderValueOption {
	if rate == 0 {
		return nil
	}
	return []*corev3.HeaderValueOption{{
		Header:       &corev3.HeaderValue{Key: wire.HeaderSampleRate, Value: strconv.FormatFloat(rate, 'f', -1, 64)},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}}
}

// apply sets the telemetry filter on the routes that have no weighted
// clusters: the gateway's own answers are never measured (no version
// served them), a forced or category-routed request always is, with what
// its cluster serves (served, by cluster name).
func (ms measuring) apply(rs []*routev3.Route, served map[string]envoyconfig.Served) error {
	if ms.m == nil {
		return nil
	}
	for _, r := range rs {
		rate := 0.0
		var sv envoyconfig.Served
		switch a := r.GetAction().(type) {
		case *routev3.Route_Route:
			if a.Route.GetWeightedClusters() != nil {
				continue
			}
			rate, sv = 1, served[a.Route.GetCluster()]
		}
		cfg, err := ms.perRoute(rate, sv, false)
		if err != nil {
			return err
		}
		r.TypedPerFilterConfig = cfg
		r.RequestHeadersToAdd = sampleRateHeader(rate)
		r.RequestHeadersToRemove = []string{wire.HeaderSampleRate}
	}
	return nil
}

// routeAction sets what every route to a pool shares: no overall timeout (a
// long answer must finish) and one retry only when no connection could be
// made, which never repeats a generation that started.
func routeAction(a *routev3.RouteAction) *routev3.RouteAction {
	a.Timeout = durationpb.New(0)
	a.RetryPolicy = &routev3.RetryPolicy{
		RetryOn:    "connect-failure,refused-stream,reset-before-request",
		NumRetries: wrapperspb.UInt32(1),
	}
	return a
}

func cluster(m *Model, v Version, g Gateway) (*clusterv3.Cluster, *endpointv3.ClusterLoadAssignment) {
	name := ClusterName(m.Name, v.Name)
	md, _ := structpb.NewStruct(map[string]any{
		wire.MetaModel:            m.Name,
		wire.MetaVersion:          v.Name,
		wire.MetaPriceInputPer1K:  v.Metadata.PriceInputPer1K,
		wire.MetaPriceOutputPer1K: v.Metadata.PriceOutputPer1K,
	})
	http1 := &upstreamhttpv3.HttpProtocolOptions{
		CommonHttpProtocolOptions: &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(g.UpstreamIdleTimeout)},
		UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{
					HttpProtocolOptions: &corev3.Http1ProtocolOptions{},
				},
			},
		},
	}
	c := &clusterv3.Cluster{
		Name:           name,
		ConnectTimeout: durationpb.New(g.ConnectTimeout),
		LbPolicy:       clusterv3.Cluster_LEAST_REQUEST,
		Metadata:       &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{wire.MetadataNamespace: md}},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": mustAny(http1),
		},
		// Inference servers queue internally; Envoy's default limit of 1024
		// concurrent requests per cluster would fail requests a pool can
		// still take.
		CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
			MaxConnections:     wrapperspb.UInt32(100000),
			MaxPendingRequests: wrapperspb.UInt32(100000),
			MaxRequests:        wrapperspb.UInt32(100000),
			MaxRetries:         wrapperspb.UInt32(1000),
		}}},
		// Eject a host that cannot be reached, but not one that answers 5xx:
		// model errors are what the analyzer must see, not hide.
		OutlierDetection: &clusterv3.OutlierDetection{
			ConsecutiveGatewayFailure:          wrapperspb.UInt32(5),
			EnforcingConsecutiveGatewayFailure: wrapperspb.UInt32(100),
			EnforcingConsecutive_5Xx:           wrapperspb.UInt32(0),
			EnforcingSuccessRate:               wrapperspb.UInt32(0),
			Interval:                           durationpb.New(5 * time.Second),
			BaseEjectionTime:                   durationpb.New(10 * time.Second),
			MaxEjectionPercent:                 wrapperspb.UInt32(50),
		},
	}
	if p := v.HealthPathOrDefault(); p != "" {
		c.HealthChecks = []*corev3.HealthCheck{{
			Timeout:            durationpb.New(2 * time.Second),
			Interval:           durationpb.New(g.HealthCheckInterval),
			UnhealthyThreshold: wrapperspb.UInt32(3),
			HealthyThreshold:   wrapperspb.UInt32(1),
			HealthChecker: &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{
				Path: p,
				// Envoy would send the cluster name as Host; "|" is not a
				// valid host character and strict servers answer 400.
				Host: "llmcanary-health-check",
			}},
		}}
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	var lbs []*endpointv3.LbEndpoint
	allIPs := true
	for _, ep := range v.Endpoints {
		host, port, _ := net.SplitHostPort(ep)
		if _, err := netip.ParseAddr(host); err != nil {
			allIPs = false
		}
		p, _ := strconv.Atoi(port)
		lbs = append(lbs, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)},
			}}},
		}}})
	}
	cla.Endpoints = []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}}
	if allIPs {
		// Addresses change without touching the cluster, so a pool can
		// scale without draining connections.
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}
		c.EdsClusterConfig = &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource()}
		return c, cla
	}
	c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS}
	c.DnsLookupFamily = clusterv3.Cluster_V4_PREFERRED
	c.LoadAssignment = cla
	return c, nil
}

// localReplies turns Envoy's own plain-text answers (a header block over
// the limit, a malformed request, no healthy host in a pool, an upstream
// timeout) into OpenAI-style JSON errors, their response code details as
// the error code. The gateway's JSON answers (the routes' direct responses,
// the wasm filter's errors) keep their bodies; they are told apart by their
// response code details (response flags are not set yet when the reply is
// rewritten).
func localReplies() *hcmv3.LocalReplyConfig {
	envoyText := &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ExtensionFilter{
		ExtensionFilter: &accesslogv3.ExtensionFilter{
			Name: "envoy.access_loggers.extension_filters.cel",
			ConfigType: &accesslogv3.ExtensionFilter_TypedConfig{TypedConfig: mustAny(&celv3.ExpressionFilter{
				Expression: fmt.Sprintf("!(response.code_details in [%q, %q])", wire.DetailsDirectResponse, wire.DetailsFilterReply),
			})},
		},
	}}
	below := func(code uint32) *accesslogv3.AccessLogFilter {
		return &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_StatusCodeFilter{
			StatusCodeFilter: &accesslogv3.StatusCodeFilter{Comparison: &accesslogv3.ComparisonFilter{
				Op:    accesslogv3.ComparisonFilter_LE,
				Value: &corev3.RuntimeUInt32{DefaultValue: code - 1, RuntimeKey: "llmcanary.local_reply.client_error_max"},
			}},
		}}
	}
	mapper := func(f *accesslogv3.AccessLogFilter, typ string) *hcmv3.ResponseMapper {
		body, _ := structpb.NewStruct(map[string]any{"error": map[string]any{
			"message": "%LOCAL_REPLY_BODY%",
			"type":    typ,
			"code":    "%RESPONSE_CODE_DETAILS%",
		}})
		return &hcmv3.ResponseMapper{Filter: f, BodyFormatOverride: &corev3.SubstitutionFormatString{
			Format:      &corev3.SubstitutionFormatString_JsonFormat{JsonFormat: body},
			ContentType: "application/json",
		}}
	}
	return &hcmv3.LocalReplyConfig{Mappers: []*hcmv3.ResponseMapper{
		mapper(&accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_AndFilter{AndFilter: &accesslogv3.AndFilter{
			Filters: []*accesslogv3.AccessLogFilter{envoyText, below(500)},
		}}}, "invalid_request_error"),
		mapper(envoyText, "server_error"),
	}}
}

func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
}

func exactHeader(name, value string) *routev3.HeaderMatcher {
	return &routev3.HeaderMatcher{
		Name: name,
		HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
			MatchPattern: &matcherv3.StringMatcher_Exact{Exact: value},
		}},
	}
}

func versionHeader(version string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: wire.HeaderVersion, Value: version},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}

func contentTypeJSON() *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: "content-type", Value: "application/json"},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}

func openAIError(msg, typ, code string) string {
	b, _ := json.Marshal(map[string]any{"error": map[string]any{"message": msg, "type": typ, "code": code}})
	return string(b)
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sortStrings(out)
	return out
}

// mustAny packs a message the translator built itself; failure is a bug.
func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(fmt.Sprintf("xds: pack %T: %v", m, err))
	}
	return a
}
