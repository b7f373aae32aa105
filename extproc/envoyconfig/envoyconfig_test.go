package envoyconfig

import (
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
				len(cfg.GetRequestAttributes()) == 0 || len(cfg.GetResponseAttributes()) == 0 {
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
