//go:build integration

package envoytest

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	fluentdv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/fluentd/v3"
	grpcalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	otelalv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/open_telemetry/v3"
	statsalv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stats/v3"
	collogs "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	otlpcommon "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/extproc/envoyconfig"
	"github.com/llmcanary/llmcanary/internal/wire"
)

// otlpLogs counts the log records an OpenTelemetry access logger exports.
type otlpLogs struct {
	collogs.UnimplementedLogsServiceServer
	n atomic.Int64
}

func (o *otlpLogs) Export(_ context.Context, req *collogs.ExportLogsServiceRequest) (*collogs.ExportLogsServiceResponse, error) {
	for _, rl := range req.ResourceLogs {
		for _, sl := range rl.ScopeLogs {
			o.n.Add(int64(len(sl.LogRecords)))
		}
	}
	return &collogs.ExportLogsServiceResponse{}, nil
}

// BenchmarkAccessLoggerEnvoyCPU compares what Envoy's access loggers cost
// it per request when each records the fields the request log needs
// (status, duration, bytes, version, flags, bucket, sample rate, request
// id): the gRPC HTTP access log (today's), OpenTelemetry's with only those
// attributes, Fluentd's with only those fields, and the stats logger
// (counters and a histogram, nothing sent per request). Envoy's process
// CPU per non-streamed request, 8 in flight, 2 workers, 3 interleaved
// rounds; medians.
//
//	go test -tags integration -run '^$' -bench AccessLoggerEnvoyCPU -benchtime 1x ./extproc/envoytest/
func BenchmarkAccessLoggerEnvoyCPU(b *testing.B) {
	upstream := startUpstream(b)
	logs := &logCounter{ch: make(chan struct{}, 1)}
	svc := startServiceWith(b, extproc.Options{Sink: newMemSink(), RequestLog: logs}, nil)

	otlp := &otlpLogs{}
	olis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	og := grpc.NewServer()
	collogs.RegisterLogsServiceServer(og, otlp)
	go og.Serve(olis)
	b.Cleanup(og.Stop)

	var fluentBytes atomic.Int64
	flis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { flis.Close() })
	go func() {
		for {
			c, err := flis.Accept()
			if err != nil {
				return
			}
			go func() {
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					fluentBytes.Add(int64(n))
					if err != nil {
						return
					}
				}
			}()
		}
	}()

	fields := map[string]string{
		"request_id": "%REQ(X-REQUEST-ID)%", "status": "%RESPONSE_CODE%", "duration": "%DURATION%",
		"bytes_in": "%BYTES_RECEIVED%", "bytes_out": "%BYTES_SENT%", "flags": "%RESPONSE_FLAGS%",
		"version": "%RESP(" + wire.HeaderVersion + ")%", "bucket": "%REQ(" + wire.HeaderBucket + ")%",
		"sample_rate": "%REQ(" + wire.HeaderSampleRate + ")%", "model": "%REQ(" + wire.HeaderModel + ")%",
		"start": "%START_TIME(%s.%3f)%", "cluster": "%UPSTREAM_CLUSTER%",
	}
	var kvs []*otlpcommon.KeyValue
	rec := map[string]any{}
	for k, v := range fields {
		kvs = append(kvs, &otlpcommon.KeyValue{Key: k, Value: &otlpcommon.AnyValue{Value: &otlpcommon.AnyValue_StringValue{StringValue: v}}})
		rec[k] = v
	}
	recStruct, err := structpb.NewStruct(rec)
	if err != nil {
		b.Fatal(err)
	}
	common := func(cluster string) *grpcalsv3.CommonGrpcAccessLogConfig {
		return &grpcalsv3.CommonGrpcAccessLogConfig{
			LogName: "llmcanary", TransportApiVersion: corev3.ApiVersion_V3,
			GrpcService:         &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: cluster}}},
			BufferFlushInterval: durationpb.New(envoyconfig.AccessLogFlushInterval),
			BufferSizeBytes:     wrapperspb.UInt32(envoyconfig.AccessLogBufferBytes),
		}
	}
	als, err := envoyconfig.AccessLog(extprocCluster)
	if err != nil {
		b.Fatal(err)
	}
	otelLog := &accesslogv3.AccessLog{Name: "envoy.access_loggers.open_telemetry", ConfigType: &accesslogv3.AccessLog_TypedConfig{
		TypedConfig: mustAny(b, &otelalv3.OpenTelemetryAccessLogConfig{CommonConfig: common("otlp"), Attributes: &otlpcommon.KeyValueList{Values: kvs}, DisableBuiltinLabels: true})}}
	fluentLog := &accesslogv3.AccessLog{Name: "envoy.access_loggers.fluentd", ConfigType: &accesslogv3.AccessLog_TypedConfig{
		TypedConfig: mustAny(b, &fluentdv3.FluentdAccessLogConfig{Cluster: "fluentd", Tag: "llmcanary", StatPrefix: "fluentd",
			BufferFlushInterval: durationpb.New(envoyconfig.AccessLogFlushInterval), BufferSizeBytes: wrapperspb.UInt32(envoyconfig.AccessLogBufferBytes),
			Record: recStruct})}}
	tag := func(n, f string) *statsalv3.Config_Tag { return &statsalv3.Config_Tag{Name: n, ValueFormat: f} }
	statsLog := &accesslogv3.AccessLog{Name: "envoy.access_loggers.stats", ConfigType: &accesslogv3.AccessLog_TypedConfig{
		TypedConfig: mustAny(b, &statsalv3.Config{StatPrefix: "llmcanary",
			Counters: []*statsalv3.Config_Counter{{Stat: &statsalv3.Config_Stat{Name: "requests", Tags: []*statsalv3.Config_Tag{
				tag("version", "%RESP("+wire.HeaderVersion+")%"), tag("code", "%RESPONSE_CODE%"), tag("flags", "%RESPONSE_FLAGS%")}},
				ValueFixed: wrapperspb.UInt64(1)}},
			Histograms: []*statsalv3.Config_Histogram{{Stat: &statsalv3.Config_Stat{Name: "duration", Tags: []*statsalv3.Config_Tag{
				tag("version", "%RESP("+wire.HeaderVersion+")%")}}, Unit: statsalv3.Config_Histogram_Milliseconds, ValueFormat: "%DURATION%"}},
		})}}

	names := []string{"none", "grpc-http", "otel", "fluentd", "stats"}
	loggers := [][]*accesslogv3.AccessLog{nil, {als}, {otelLog}, {fluentLog}, {statsLog}}
	fc := envoyconfig.Cluster("fluentd", flis.Addr().String())
	fc.TypedExtensionProtocolOptions = nil
	p, urls := runListeners(b, 2, len(names), func(i int, port uint32) *listenerv3.Listener {
		return listener(b, names[i], port, nil, nil, loggers[i])
	}, versionCluster(b, upstreamCluster, metaVersion, upstream), envoyconfig.Cluster(extprocCluster, svc.addr),
		envoyconfig.Cluster("otlp", olis.Addr().String()), fc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	hdr := map[string]string{hdrMode: "json", hdrTokens: "16", wire.HeaderBucket: "123", wire.HeaderSampleRate: "0"}
	sent := make([]int, len(names))
	settle := func(i int) {
		switch names[i] {
		case "grpc-http":
			logs.waitFor(b, sent[i])
		case "otel":
			for otlp.n.Load() < int64(sent[i]) {
				time.Sleep(10 * time.Millisecond)
			}
		case "fluentd":
			for last := int64(-1); ; {
				time.Sleep(250 * time.Millisecond)
				if n := fluentBytes.Load(); n == last {
					break
				} else {
					last = n
				}
			}
		}
	}
	phase := func(i, n int) float64 {
		return envoyCPUPerRequest(b, p.Pid(), n, func() {
			if _, _, err := load(ctx, urls[i], n, 8, hdr); err != nil {
				b.Fatal(err)
			}
			sent[i] += n
			settle(i)
		})
	}
	for i := range names {
		phase(i, 400)
	}
	settle(3)
	if fluentBytes.Load() == 0 {
		b.Fatalf("the fluentd logger sent nothing\n%s", p.Tail(30))
	}
	cpu := interleaved(3, len(names), func(j int) float64 { return phase(j, 4000) })
	base := median(cpu[0])
	for j, n := range names {
		m := median(cpu[j])
		b.ReportMetric(m-base, "µs/req-added-"+n)
		b.Logf("%-10s Envoy CPU µs per request %.0f (%+.1f over no access log) %v", n, m, m-base, cpu[j])
	}
}
