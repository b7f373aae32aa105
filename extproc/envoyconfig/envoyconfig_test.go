package envoyconfig

import (
	"maps"
	"math"
	"slices"
	"testing"
	"time"

	grpcalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"

	"github.com/llmcanary/llmcanary/internal/wire"
)

func TestHTTPFilter(t *testing.T) {
	tests := []struct {
		name        string
		in          FilterOptions
		wantErr     bool
		wantReqBody extprocfilterv3.ProcessingMode_BodySendMode
		wantClose   time.Duration
	}{
		{"defaults: observe without the request body", FilterOptions{ClusterName: "x"}, false, extprocfilterv3.ProcessingMode_NONE, DefaultDeferredCloseTimeout},
		{"capture streams the request body", FilterOptions{ClusterName: "x", CaptureRequestBody: true, DeferredCloseTimeout: time.Second}, false, extprocfilterv3.ProcessingMode_STREAMED, time.Second},
		{"a cluster is required", FilterOptions{}, true, 0, 0},
		{"negative timeouts are rejected", FilterOptions{ClusterName: "x", DeferredCloseTimeout: -time.Second}, true, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := HTTPFilter(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			var cfg extprocfilterv3.ExternalProcessor
			if err := f.GetTypedConfig().UnmarshalTo(&cfg); err != nil {
				t.Fatal(err)
			}
			pm := cfg.GetProcessingMode()
			if f.GetName() != FilterName || !cfg.GetObservabilityMode() || !cfg.GetFailureModeAllow() ||
				cfg.GetGrpcService().GetEnvoyGrpc().GetClusterName() != tt.in.ClusterName ||
				pm.GetResponseBodyMode() != extprocfilterv3.ProcessingMode_STREAMED ||
				pm.GetResponseTrailerMode() != extprocfilterv3.ProcessingMode_SEND ||
				pm.GetRequestBodyMode() != tt.wantReqBody ||
				cfg.GetDeferredCloseTimeout().AsDuration() != tt.wantClose ||
				!slices.Equal(cfg.GetRequestAttributes(), []string{AttrRequestTime}) || len(cfg.GetResponseAttributes()) != 0 {
				t.Fatalf("filter config = %v", &cfg)
			}
		})
	}
}

func TestClusterIsValidHTTP2Static(t *testing.T) {
	c := Cluster("llmcanary_extproc", "127.0.0.1:9002")
	if err := c.ValidateAll(); err != nil {
		t.Fatal(err)
	}
	ep := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
	if ep.GetAddress() != "127.0.0.1" || ep.GetPortValue() != 9002 {
		t.Fatalf("endpoint = %v", ep)
	}
	if _, ok := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]; !ok {
		t.Fatal("the cluster must speak HTTP/2 for gRPC")
	}
	if err := Cluster("x", "no-port").ValidateAll(); err == nil {
		t.Fatal("an address without a port must not yield a valid cluster")
	}
}

func TestAccessLogRecordsEveryRequestWithTheRoutingHeaders(t *testing.T) {
	al, err := AccessLog("llmcanary_extproc")
	if err != nil {
		t.Fatal(err)
	}
	if err := al.ValidateAll(); err != nil {
		t.Fatal(err)
	}
	if al.GetFilter() != nil {
		t.Fatalf("the access log is filtered (%v): every request must be recorded", al.GetFilter())
	}
	var cfg grpcalsv3.HttpGrpcAccessLogConfig
	if err := al.GetTypedConfig().UnmarshalTo(&cfg); err != nil {
		t.Fatal(err)
	}
	cc := cfg.GetCommonConfig()
	if cc.GetGrpcService().GetEnvoyGrpc().GetClusterName() != "llmcanary_extproc" ||
		cc.GetBufferFlushInterval().AsDuration() != AccessLogFlushInterval || cc.GetBufferSizeBytes().GetValue() != AccessLogBufferBytes {
		t.Fatalf("common config = %v", cc)
	}
	for _, h := range []string{wire.HeaderModel, wire.HeaderBucket, wire.HeaderForce, wire.HeaderSampleRate} {
		if !slices.Contains(cfg.GetAdditionalRequestHeadersToLog(), h) {
			t.Errorf("request header %s is not logged", h)
		}
	}
	if !slices.Contains(cfg.GetAdditionalResponseHeadersToLog(), wire.HeaderVersion) {
		t.Errorf("response header %s is not logged", wire.HeaderVersion)
	}
}

func TestPerRouteOpensTheStreamWithTheRateAndWhatTheClusterServes(t *testing.T) {
	served := Served{Cluster: "llama_v2", Model: "llama", Version: "v2", PriceInputPer1K: 0.5, PriceOutputPer1K: 0}
	tests := []struct {
		name    string
		rate    float64
		served  Served
		want    map[string]string // nil: the filter is off
		wantErr bool
	}{
		{"a timed cluster", 0.25, served, map[string]string{
			wire.MetadataSampleRate: "0.25", wire.MetadataCluster: "llama_v2", wire.MetadataModel: "llama",
			wire.MetadataVersion: "v2", wire.MetadataPriceInputPer1K: "0.5", wire.MetadataPriceOutputPer1K: "0",
		}, false},
		{"a route that serves no known version carries the rate alone", 1, Served{}, map[string]string{wire.MetadataSampleRate: "1"}, false},
		{"rate 0 switches the filter off", 0, served, nil, false},
		{"a rate above 1 is rejected", 1.5, served, nil, true},
		{"a NaN price is rejected", 1, Served{Version: "v2", PriceInputPer1K: math.NaN()}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := PerRoute(tt.rate, tt.served, false)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			var pr extprocfilterv3.ExtProcPerRoute
			if err := a.UnmarshalTo(&pr); err != nil {
				t.Fatal(err)
			}
			if tt.want == nil {
				if !pr.GetDisabled() {
					t.Fatalf("per-route = %v, want disabled", &pr)
				}
				return
			}
			got := map[string]string{}
			for _, h := range pr.GetOverrides().GetGrpcInitialMetadata() {
				got[h.GetKey()] = h.GetValue()
			}
			if !maps.Equal(got, tt.want) {
				t.Fatalf("metadata = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestShadowFilterMarksItsStreamsAndSaysWhatServesThem(t *testing.T) {
	f, err := ShadowFilter(FilterOptions{ClusterName: "x"}, Served{Cluster: "llama_v2_shadow", Model: "llama", Version: "v2", PriceInputPer1K: 1, PriceOutputPer1K: 2})
	if err != nil {
		t.Fatal(err)
	}
	var cfg extprocfilterv3.ExternalProcessor
	if err := f.GetTypedConfig().UnmarshalTo(&cfg); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, h := range cfg.GetGrpcService().GetInitialMetadata() {
		got[h.GetKey()] = h.GetValue()
	}
	want := map[string]string{
		wire.MetadataShadowModel: "llama", wire.MetadataShadowVersion: "v2",
		wire.MetadataCluster: "llama_v2_shadow", wire.MetadataModel: "llama", wire.MetadataVersion: "v2",
		wire.MetadataPriceInputPer1K: "1", wire.MetadataPriceOutputPer1K: "2",
	}
	if !maps.Equal(got, want) || cfg.GetProcessingMode().GetRequestBodyMode() != extprocfilterv3.ProcessingMode_STREAMED {
		t.Fatalf("shadow filter metadata %v, request body %v; want %v and the body streamed", got, cfg.GetProcessingMode().GetRequestBodyMode(), want)
	}
	if _, err := ShadowFilter(FilterOptions{ClusterName: "x"}, Served{Model: "llama"}); err == nil {
		t.Fatal("a shadow filter without a version must be rejected")
	}
}
