// Package envoyconfig builds the Envoy side of llmcanary's telemetry: the
// ext_proc HTTP filter in observability mode, the per-route settings that
// say which requests are measured, the gRPC access log every request is
// recorded through, and the cluster of the telemetry service. It holds no
// server code, so the control plane can import it alone.
package envoyconfig

import (
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	grpcalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmcanary/llmcanary/internal/wire"
)

// FilterName is the Envoy HTTP filter the service is reached through.
const FilterName = "envoy.filters.http.ext_proc"

// Defaults of FilterOptions.
const (
	DefaultMessageTimeout       = 200 * time.Millisecond
	DefaultDeferredCloseTimeout = 2 * time.Second
)

// FilterOptions shape the ext_proc HTTP filter.
type FilterOptions struct {
	// ClusterName is the Envoy cluster of the service (see Cluster). Required.
	ClusterName string
	// CaptureRequestBody streams the request body to the service, which it
	// needs only for prompt capture. Off: the request body is not sent.
	CaptureRequestBody bool
	// MessageTimeout applies only if observability mode were off; kept so
	// the filter never waits long on the service. Zero means the default.
	MessageTimeout time.Duration
	// DeferredCloseTimeout is how long Envoy keeps a stream to the service
	// open after the HTTP request ended, so messages in flight still
	// arrive; it is also how late the record of an abandoned request comes.
	// Zero means the default.
	DeferredCloseTimeout time.Duration
	// StatPrefix distinguishes this filter's Envoy stats.
	StatPrefix string
}

// HTTPFilter returns the envoy.filters.http.ext_proc filter in
// observability mode: Envoy sends each part of the request and response
// and never waits for the service; failure_mode_allow keeps a missing
// service from ever failing a request. Response trailers are sent so that
// responses ending in trailers also reach their end. Envoy is asked for
// one attribute only, the request's start (RequestAttributes): a message
// with attributes costs Envoy a CEL evaluation and a protobuf Struct, and
// in BenchmarkTelemetryEnvoyCPU's seven runs a timed request cost it
// 12–52 µs more CPU (median 26) with the dozen it once asked for than
// with none, while request.time alone was within the noise of none (−12
// to +31, median +7). What a stream needs to know besides opens it as
// gRPC metadata (PerRoute), and the status is the response's :status
// header. The start stays Envoy's: the service's clock when the stream
// opens trails it by the body's arrival (the wasm filter holds the headers
// until it has read the body) and by the stream's delivery, which reached
// tens of milliseconds on a loaded machine and would bias TTFT low.
func HTTPFilter(o FilterOptions) (*hcmv3.HttpFilter, error) {
	cfg, err := processor(o)
	if err != nil {
		return nil, err
	}
	return filter(cfg)
}

// ShadowFilter returns the ext_proc filter that observes the mirrored
// requests of a version as an upstream filter of the version's shadow
// cluster (Envoy mirrors in the router, after every downstream filter, so
// only an upstream filter sees the mirrored answer). served names the
// shadow cluster, its model and version, and their prices. Its streams
// open with them and with the shadow marker (wire.MetadataShadowModel,
// wire.MetadataShadowVersion), and it always streams the request body:
// the service records every mirrored prompt and answer, since each one is
// half of a judged pair.
func ShadowFilter(o FilterOptions, served Served) (*hcmv3.HttpFilter, error) {
	if served.Model == "" || served.Version == "" {
		return nil, errors.New("ext_proc shadow filter: model and version are required")
	}
	o.CaptureRequestBody = true
	cfg, err := processor(o)
	if err != nil {
		return nil, err
	}
	cfg.GrpcService.InitialMetadata = append([]*corev3.HeaderValue{
		{Key: wire.MetadataShadowModel, Value: served.Model},
		{Key: wire.MetadataShadowVersion, Value: served.Version},
	}, served.metadata()...)
	return filter(cfg)
}

// ForwardedHeaders are the request and response headers the service reads
// (extproc.Server); Envoy sends only these (forward_rules). Every other
// header of a timed request — a client's dozen, the pool's — cost Envoy a
// protobuf header entry per message and the service its decoding, for
// nothing.
var ForwardedHeaders = []string{
	":path", wire.HeaderRequestID, wire.HeaderModel, wire.HeaderBucket, wire.HeaderForce,
	wire.HeaderCategory, wire.HeaderAssigned, // request
	":status", "content-type", wire.HeaderVersion, // response
}

func forwardRules() *extprocfilterv3.HeaderForwardingRules {
	l := &matcherv3.ListStringMatcher{}
	for _, h := range ForwardedHeaders {
		l.Patterns = append(l.Patterns, &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: h}})
	}
	return &extprocfilterv3.HeaderForwardingRules{AllowedHeaders: l}
}

func processor(o FilterOptions) (*extprocfilterv3.ExternalProcessor, error) {
	if o.ClusterName == "" {
		return nil, errors.New("ext_proc filter: cluster name is required")
	}
	if o.MessageTimeout < 0 || o.DeferredCloseTimeout < 0 {
		return nil, errors.New("ext_proc filter: timeouts must not be negative")
	}
	if o.MessageTimeout == 0 {
		o.MessageTimeout = DefaultMessageTimeout
	}
	if o.DeferredCloseTimeout == 0 {
		o.DeferredCloseTimeout = DefaultDeferredCloseTimeout
	}
	reqBody := extprocfilterv3.ProcessingMode_NONE
	if o.CaptureRequestBody {
		reqBody = extprocfilterv3.ProcessingMode_STREAMED
	}
	return &extprocfilterv3.ExternalProcessor{
		GrpcService: &corev3.GrpcService{
			TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
				EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: o.ClusterName},
			},
		},
		ObservabilityMode: true,
		FailureModeAllow:  true,
		ProcessingMode: &extprocfilterv3.ProcessingMode{
			RequestHeaderMode:   extprocfilterv3.ProcessingMode_SEND,
			RequestBodyMode:     reqBody,
			RequestTrailerMode:  extprocfilterv3.ProcessingMode_SKIP,
			ResponseHeaderMode:  extprocfilterv3.ProcessingMode_SEND,
			ResponseBodyMode:    extprocfilterv3.ProcessingMode_STREAMED,
			ResponseTrailerMode: extprocfilterv3.ProcessingMode_SEND,
		},
		RequestAttributes:    RequestAttributes,
		ForwardRules:         forwardRules(),
		MessageTimeout:       durationpb.New(o.MessageTimeout),
		DeferredCloseTimeout: durationpb.New(o.DeferredCloseTimeout),
		StatPrefix:           o.StatPrefix,
	}, nil
}

func filter(cfg *extprocfilterv3.ExternalProcessor) (*hcmv3.HttpFilter, error) {
	if err := cfg.ValidateAll(); err != nil {
		return nil, fmt.Errorf("ext_proc filter: %w", err)
	}
	a, err := anypb.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("ext_proc filter: %w", err)
	}
	return &hcmv3.HttpFilter{
		Name:       FilterName,
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a},
	}, nil
}

// Cluster returns the STATIC HTTP/2 cluster through which Envoy reaches the
// service at addr ("host:port", a literal IP). Circuit-breaker limits are
// raised because every in-flight HTTP request holds one gRPC stream, and
// holds it for DeferredCloseTimeout more after it ends.
func Cluster(name, addr string) *clusterv3.Cluster {
	host, portStr, err := net.SplitHostPort(addr)
	port, perr := strconv.ParseUint(portStr, 10, 32)
	if err != nil || perr != nil {
		// An invalid address yields a cluster that fails ValidateAll where
		// it is published (no endpoint address), rather than a panic here.
		host, port = "", 0
	}
	h2, _ := anypb.New(&upstreamhttpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
					Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
				},
			},
		},
	})
	const many = 1 << 20
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(time.Second),
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": h2,
		},
		CircuitBreakers: &clusterv3.CircuitBreakers{
			Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
				MaxConnections:     wrapperspb.UInt32(many),
				MaxPendingRequests: wrapperspb.UInt32(many),
				MaxRequests:        wrapperspb.UInt32(many),
			}},
		},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{{
					HostIdentifier: &endpointv3.LbEndpoint_Endpoint{
						Endpoint: &endpointv3.Endpoint{
							Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
								SocketAddress: &corev3.SocketAddress{
									Address:       host,
									PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
								},
							}},
						},
					},
				}},
			}},
		},
	}
}

// Settings of the access log's batches (see AccessLog).
const (
	// AccessLogFlushInterval bounds how long an entry waits in Envoy
	// before it is sent: a request cut off mid-answer waits that long for
	// its cause (see extproc.ResetCauses), so it is kept short.
	AccessLogFlushInterval = 100 * time.Millisecond
	// AccessLogBufferBytes is the batch each of Envoy's workers sends as
	// soon as it is full (Envoy's default): about thirty entries of a chat
	// completion (some 480 bytes each on the wire), so under load an entry
	// costs a thirtieth of a gRPC message.
	AccessLogBufferBytes = 16 << 10
)

// AccessLogHeaders are the request headers every access-log entry carries
// beyond Envoy's standard properties (which include x-request-id): those
// the wasm filter and the route set on the request.
var AccessLogHeaders = []string{wire.HeaderModel, wire.HeaderBucket, wire.HeaderForce, wire.HeaderSampleRate, wire.HeaderAssigned}

// AccessLogResponseHeaders are the response headers every entry carries:
// the served version, which the route adds per weighted cluster.
var AccessLogResponseHeaders = []string{wire.HeaderVersion}

// AccessLog returns the HTTP access log through which Envoy records every
// request, measured or not, to the telemetry service (cluster
// clusterName): Envoy's gRPC access logger, which batches entries per
// worker and never holds a request up. The service writes each entry to
// the request log (status, duration, bytes, version, response flags,
// sample rate) and learns from the entries with a connection-level
// response flag who cut a request off, which ext_proc cannot see.
func AccessLog(clusterName string) (*accesslogv3.AccessLog, error) {
	cfg, err := anypb.New(&grpcalsv3.HttpGrpcAccessLogConfig{
		CommonConfig: &grpcalsv3.CommonGrpcAccessLogConfig{
			LogName: "llmcanary",
			GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
				EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: clusterName},
			}},
			TransportApiVersion: corev3.ApiVersion_V3,
			BufferFlushInterval: durationpb.New(AccessLogFlushInterval),
			BufferSizeBytes:     wrapperspb.UInt32(AccessLogBufferBytes),
		},
		AdditionalRequestHeadersToLog:  AccessLogHeaders,
		AdditionalResponseHeadersToLog: AccessLogResponseHeaders,
	})
	if err != nil {
		return nil, err
	}
	return &accesslogv3.AccessLog{
		Name:       "envoy.access_loggers.http_grpc",
		ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: cfg},
	}, nil
}

// AttrRequestTime is the attribute Envoy sends with the request headers:
// when it received the request's first byte, the row's start.
const AttrRequestTime = "request.time"

// RequestAttributes are the attributes Envoy sends with the request
// headers; none are sent with the response.
var RequestAttributes = []string{AttrRequestTime}

// Served is what a route or weighted cluster sends a request to: the
// cluster, its model and version, and their prices in USD per 1000 tokens.
// The timed request's telemetry stream opens with it (see PerRoute), so
// the service labels and prices the row without asking Envoy anything.
type Served struct {
	Cluster          string
	Model            string
	Version          string
	PriceInputPer1K  float64
	PriceOutputPer1K float64
}

// metadata is s as the stream's gRPC metadata: nothing for a zero s (a
// route that serves no known version), prices only with a version.
func (s Served) metadata() []*corev3.HeaderValue {
	var md []*corev3.HeaderValue
	add := func(k, v string) {
		if v != "" {
			md = append(md, &corev3.HeaderValue{Key: k, Value: v})
		}
	}
	add(wire.MetadataCluster, s.Cluster)
	add(wire.MetadataModel, s.Model)
	add(wire.MetadataVersion, s.Version)
	if s.Version != "" {
		add(wire.MetadataPriceInputPer1K, strconv.FormatFloat(s.PriceInputPer1K, 'f', -1, 64))
		add(wire.MetadataPriceOutputPer1K, strconv.FormatFloat(s.PriceOutputPer1K, 'f', -1, 64))
	}
	return md
}

// PerRoute returns the ext_proc filter's per-route settings for traffic
// to served measured at rate, the share of its arm's users whose requests
// are timed: in (0, 1], the stream to the service opens with the rate
// (wire.MetadataSampleRate) and served as gRPC metadata, so every row
// carries them; 0 turns the filter off, and Envoy then opens no stream at
// all. It is set on routes and on the clusters of weighted routes.
//
// captureAll asks the service to keep the text of every request on the
// route (wire.MetadataCaptureAll) whenever its capture is on: stable's
// answers to the requests a shadow stage mirrors.
func PerRoute(rate float64, served Served, captureAll bool) (*anypb.Any, error) {
	if !(rate >= 0 && rate <= 1) {
		return nil, fmt.Errorf("ext_proc per-route: sample rate %v is not in [0, 1]", rate)
	}
	if math.IsNaN(served.PriceInputPer1K) || math.IsNaN(served.PriceOutputPer1K) {
		return nil, fmt.Errorf("ext_proc per-route: prices of %s are not numbers", served.Cluster)
	}
	pr := &extprocfilterv3.ExtProcPerRoute{}
	if rate == 0 {
		pr.Override = &extprocfilterv3.ExtProcPerRoute_Disabled{Disabled: true}
	} else {
		md := append([]*corev3.HeaderValue{{Key: wire.MetadataSampleRate, Value: FormatRate(rate)}}, served.metadata()...)
		if captureAll {
			md = append(md, &corev3.HeaderValue{Key: wire.MetadataCaptureAll, Value: "1"})
		}
		pr.Override = &extprocfilterv3.ExtProcPerRoute_Overrides{Overrides: &extprocfilterv3.ExtProcOverrides{GrpcInitialMetadata: md}}
	}
	if err := pr.ValidateAll(); err != nil {
		return nil, fmt.Errorf("ext_proc per-route: %w", err)
	}
	return anypb.New(pr)
}

// FormatRate writes a sample rate as the route and the metadata carry it.
func FormatRate(rate float64) string { return strconv.FormatFloat(rate, 'f', -1, 64) }
