package extproc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogsvc "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmcanary/llmcanary/extproc/envoyconfig"
	"github.com/llmcanary/llmcanary/internal/procs"
	"github.com/llmcanary/llmcanary/internal/wire"
)

// serveEnv makes the test binary a bare ext_proc service (see TestMain):
// BenchmarkServiceCPU runs the service in a process of its own so that its
// CPU is measured apart from the client that plays Envoy.
const serveEnv = "LLMCANARY_EXTPROC_BENCH_SERVE"

func TestMain(m *testing.M) {
	if os.Getenv(serveEnv) != "" {
		serveForBenchmark()
		return
	}
	os.Exit(m.Run())
}

// countSink counts records and access-log entries and keeps nothing.
type countSink struct{ n, logs atomic.Int64 }

func (c *countSink) Write(Record)      { c.n.Add(1) }
func (c *countSink) WriteLog(LogEntry) { c.logs.Add(1) }

// serveForBenchmark runs a Server with default options on a loopback port,
// prints the address on stdout and serves until stdin closes.
func serveForBenchmark() {
	srv, err := NewServer(Options{Sink: &countSink{}, ResetWait: -1})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	g := grpc.NewServer(ServerOptions()...)
	srv.Register(g)
	go g.Serve(lis)
	// LLMCANARY_EXTPROC_BENCH_CPUPROFILE names a file for the service's CPU
	// profile over its whole run.
	if path := os.Getenv("LLMCANARY_EXTPROC_BENCH_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err == nil && pprof.StartCPUProfile(f) == nil {
			defer f.Close()
			defer pprof.StopCPUProfile()
		}
	}
	fmt.Println(lis.Addr().String())
	io.Copy(io.Discard, os.Stdin)
	g.Stop()
}

// benchRequest is the messages Envoy's ext_proc filter (observability mode,
// as HTTPFilter configures it) sends for one streamed chat completion whose
// response carries one SSE event per body message: tokens content events,
// then the finish event, the usage event and [DONE], then an empty end of
// stream. Headers and the request's start attribute are those Envoy
// sends; the stream opens with the metadata of a route measured at rate 1
// (see play).
func benchRequest(tokens int) []*extprocv3.ProcessingRequest {
	h := func(kv ...string) *corev3.HeaderMap {
		m := &corev3.HeaderMap{}
		for i := 0; i < len(kv); i += 2 {
			m.Headers = append(m.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
		}
		return m
	}
	start, err := structpb.NewStruct(map[string]any{envoyconfig.AttrRequestTime: time.Now().Add(-time.Millisecond).UTC().Format(time.RFC3339Nano)})
	if err != nil {
		panic(err)
	}
	msgs := []*extprocv3.ProcessingRequest{{
		ObservabilityMode: true,
		Attributes:        map[string]*structpb.Struct{envoyconfig.FilterName: start},
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: h(
			":authority", "gateway.local:10000", ":path", "/v1/chat/completions", ":method", "POST", ":scheme", "http",
			"content-type", "application/json", "content-length", "180", "user-agent", "openai-python/1.40",
			"accept", "application/json", wire.HeaderUserID, "user-1234",
			wire.HeaderRequestID, "6c9bfc4e-42a5-4b8e-9a4c-7d0f6f6d2b31", wire.HeaderModel, "llama",
			wire.HeaderBucket, "1234567890123456789", "x-forwarded-proto", "http",
		)}},
	}, {
		ObservabilityMode: true,
		Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{Headers: h(
			":status", "200", "content-type", "text/event-stream; charset=utf-8", "cache-control", "no-cache",
			"date", "Mon, 01 Jan 2026 00:00:00 GMT", "x-envoy-upstream-service-time", "3",
			wire.HeaderVersion, "v7", wire.HeaderRequestID, "6c9bfc4e-42a5-4b8e-9a4c-7d0f6f6d2b31",
		)}},
	}}
	body := func(data string, end bool) *extprocv3.ProcessingRequest {
		return &extprocv3.ProcessingRequest{ObservabilityMode: true, Request: &extprocv3.ProcessingRequest_ResponseBody{
			ResponseBody: &extprocv3.HttpBody{Body: []byte(data), EndOfStream: end}}}
	}
	const head = `data: {"id":"chatcmpl-9f8e7d6c5b4a","object":"chat.completion.chunk","created":1767225600,"model":"llama","choices":[{"index":0,`
	for i := 0; i < tokens; i++ {
		msgs = append(msgs, body(head+fmt.Sprintf(`"delta":{"content":" word%d"},"logprobs":null,"finish_reason":null}]}`, i)+"\n\n", false))
	}
	msgs = append(msgs,
		body(head+`"delta":{},"logprobs":null,"finish_reason":"stop"}]}`+"\n\n", false),
		body(`data: {"id":"chatcmpl-9f8e7d6c5b4a","object":"chat.completion.chunk","created":1767225600,"model":"llama","choices":[],"usage":{"prompt_tokens":42,"total_tokens":`+fmt.Sprint(42+tokens)+`,"completion_tokens":`+fmt.Sprint(tokens)+`}}`+"\n\n", false),
		body("data: [DONE]\n\n", false),
		body("", true),
	)
	return msgs
}

// serviceProcess is the ext_proc service running in a child process.
type serviceProcess struct {
	cmd    *exec.Cmd
	stdin  io.Closer
	client extprocv3.ExternalProcessorClient
	logs   accesslogsvc.AccessLogServiceClient
}

func startServiceProcess(b *testing.B) *serviceProcess {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), serveEnv+"=1")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	addr, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("service process: %v", err)
	}
	conn, err := grpc.NewClient(strings.TrimSpace(addr), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	p := &serviceProcess{cmd: cmd, stdin: stdin, client: extprocv3.NewExternalProcessorClient(conn),
		logs: accesslogsvc.NewAccessLogServiceClient(conn)}
	b.Cleanup(func() {
		conn.Close()
		stdin.Close()
		cmd.Wait()
	})
	return p
}

// play sends one request's messages on a new stream, gap apart as tokens
// arrive from a model (so the service reads each message on its own, as it
// does behind Envoy, rather than many per read), and waits for the service
// to end the stream, as it does once the response is complete.
func (p *serviceProcess) play(ctx context.Context, msgs []*extprocv3.ProcessingRequest, gap time.Duration) error {
	s, err := p.client.Process(metadata.AppendToOutgoingContext(ctx, wire.MetadataSampleRate, "1",
		wire.MetadataCluster, "llama_v7", wire.MetadataModel, "llama", wire.MetadataVersion, "v7",
		wire.MetadataPriceInputPer1K, "0.5", wire.MetadataPriceOutputPer1K, "1.5"))
	if err != nil {
		return err
	}
	for i, m := range msgs {
		if i > 0 {
			time.Sleep(gap)
		}
		if err := s.Send(m); err != nil {
			return fmt.Errorf("send: %w", err)
		}
	}
	if err := s.CloseSend(); err != nil {
		return err
	}
	if _, err := s.Recv(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("stream end: %v", err)
	}
	return nil
}

// cpu returns the child's CPU time (user + system).
func (p *serviceProcess) cpu(b *testing.B) time.Duration {
	d, err := procs.ProcCPU(p.cmd.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}
	return d
}

// messageGap separates the messages of one request in BenchmarkServiceCPU.
const messageGap = 200 * time.Microsecond

// phase plays n copies of msgs, c at a time, and returns the service's CPU
// per request in µs.
func (p *serviceProcess) phase(b *testing.B, msgs []*extprocv3.ProcessingRequest, n, c int) float64 {
	ctx := context.Background()
	next := make(chan struct{})
	var wg sync.WaitGroup
	var failed atomic.Value
	c0 := p.cpu(b)
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				if err := p.play(ctx, msgs, messageGap); err != nil {
					failed.Store(err)
				}
			}
		}()
	}
	for range n {
		next <- struct{}{}
	}
	close(next)
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	return float64(p.cpu(b)-c0) / float64(time.Microsecond) / float64(n)
}

// BenchmarkServiceCPU measures the ext_proc service's own CPU (its process,
// from /proc, gRPC included) for streamed requests of two lengths, one SSE
// event per body message as vLLM sends tokens, messageGap apart: a short answer (1 token,
// 5 body messages) and a long one (64 tokens, 68 body messages). The
// difference per extra message is the cost of a body message; what is left
// of the short request is the cost of a request besides its body messages.
// 3 interleaved rounds; medians.
//
//	go test -run '^$' -bench ServiceCPU -benchtime 1x ./extproc/
func BenchmarkServiceCPU(b *testing.B) {
	const (
		rounds   = 3
		inFlight = 8
		short    = 1
		long     = 64
	)
	p := startServiceProcess(b)
	shortMsgs, longMsgs := benchRequest(short), benchRequest(long)
	bodyMsgs := func(m []*extprocv3.ProcessingRequest) int { return len(m) - 2 }
	p.phase(b, shortMsgs, 500, inFlight) // warm up
	p.phase(b, longMsgs, 100, inFlight)
	for range b.N {
		var perMsg, perReq, shortReq, longReq []float64
		for r := 0; r < rounds; r++ {
			var s, l float64
			if r%2 == 0 {
				s, l = p.phase(b, shortMsgs, 4000, inFlight), p.phase(b, longMsgs, 400, inFlight)
			} else {
				l, s = p.phase(b, longMsgs, 400, inFlight), p.phase(b, shortMsgs, 4000, inFlight)
			}
			m := (l - s) / float64(bodyMsgs(longMsgs)-bodyMsgs(shortMsgs))
			shortReq, longReq = append(shortReq, s), append(longReq, l)
			perMsg = append(perMsg, m)
			perReq = append(perReq, s-m*float64(bodyMsgs(shortMsgs)))
		}
		med := func(v []float64) float64 { s := slices.Clone(v); slices.Sort(s); return s[len(s)/2] }
		b.ReportMetric(med(perMsg), "µs/body-msg")
		b.ReportMetric(med(perReq), "µs/req-besides-msgs")
		b.ReportMetric(med(longReq), "µs/req-64-tokens")
		b.Logf("service CPU µs per request: short %v, long %v; per body message %v; per request besides messages %v",
			shortReq, longReq, perMsg, perReq)
	}
}

// benchLogEntry is an access-log entry as Envoy sends it for a streamed
// chat completion, with the headers envoyconfig.AccessLog adds.
func benchLogEntry(i int) *accesslogdata.HTTPAccessLogEntry {
	addr := func(port uint32) *corev3.Address {
		return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
	}
	ms := func(n int) *durationpb.Duration { return durationpb.New(time.Duration(n) * time.Millisecond) }
	id := fmt.Sprintf("6c9bfc4e-42a5-4b8e-9a4c-%012d", i)
	return &accesslogdata.HTTPAccessLogEntry{
		CommonProperties: &accesslogdata.AccessLogCommon{
			DownstreamRemoteAddress: addr(51234), DownstreamLocalAddress: addr(10000), DownstreamDirectRemoteAddress: addr(51234),
			StartTime:        timestamppb.Now(),
			TimeToLastRxByte: ms(1), TimeToFirstUpstreamTxByte: ms(2), TimeToLastUpstreamTxByte: ms(2),
			TimeToFirstUpstreamRxByte: ms(40), TimeToLastUpstreamRxByte: ms(900),
			TimeToFirstDownstreamTxByte: ms(41), TimeToLastDownstreamTxByte: ms(901), Duration: ms(901),
			UpstreamRemoteAddress: addr(8001), UpstreamLocalAddress: addr(40000),
			UpstreamCluster: "llama_v7", ResponseFlags: &accesslogdata.ResponseFlags{}, RouteName: "llama",
			UpstreamRequestAttemptCount: 1, StreamId: id,
			DownstreamWireBytesSent: 9000, DownstreamWireBytesReceived: 400, UpstreamWireBytesSent: 420, UpstreamWireBytesReceived: 8900,
			AccessLogType: accesslogdata.AccessLogType_DownstreamEnd,
		},
		ProtocolVersion: accesslogdata.HTTPAccessLogEntry_HTTP11,
		Request: &accesslogdata.HTTPRequestProperties{
			RequestMethod: corev3.RequestMethod_POST, Scheme: "http", Authority: "gateway.local:10000",
			Path: "/v1/chat/completions", UserAgent: "openai-python/1.40", RequestId: id,
			RequestHeadersBytes: 250, RequestBodyBytes: 180,
			RequestHeaders: map[string]string{
				wire.HeaderModel: "llama", wire.HeaderBucket: "1234567890123456789", wire.HeaderSampleRate: "0.02",
			},
		},
		Response: &accesslogdata.HTTPResponseProperties{
			ResponseCode: wrapperspb.UInt32(200), ResponseHeadersBytes: 180, ResponseBodyBytes: 8800,
			ResponseHeaders: map[string]string{wire.HeaderVersion: "v7"}, ResponseCodeDetails: "via_upstream",
		},
	}
}

// benchBatch is n entries as benchLogEntry makes them.
func benchBatch(n int) []*accesslogdata.HTTPAccessLogEntry {
	out := make([]*accesslogdata.HTTPAccessLogEntry, n)
	for i := range out {
		out[i] = benchLogEntry(i)
	}
	return out
}

// BenchmarkAccessLogServiceCPU measures the service's own CPU (its
// process) per access-log entry: Envoy's batches of logBatch entries on
// two streams (one per Envoy worker), read, turned into LogEntries and
// handed to a sink that counts them (the ClickHouse writer's cost is
// BenchmarkWriterSustainedRows'). 3 rounds; median.
//
//	go test -run '^$' -bench AccessLogServiceCPU -benchtime 1x ./extproc/
func BenchmarkAccessLogServiceCPU(b *testing.B) {
	const (
		rounds   = 3
		logBatch = 32 // entries in Envoy's 16 KiB batch (envoyconfig.AccessLogBufferBytes)
		batches  = 1000
		workers  = 2
	)
	p := startServiceProcess(b)
	msg := &accesslogsvc.StreamAccessLogsMessage{
		Identifier: &accesslogsvc.StreamAccessLogsMessage_Identifier{LogName: "llmcanary"},
		LogEntries: &accesslogsvc.StreamAccessLogsMessage_HttpLogs{HttpLogs: &accesslogsvc.StreamAccessLogsMessage_HTTPAccessLogEntries{}},
	}
	msg.GetHttpLogs().LogEntry = benchBatch(logBatch)
	b.Logf("a batch of %d entries is %d bytes", logBatch, proto.Size(msg))
	send := func(n int) {
		var wg sync.WaitGroup
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s, err := p.logs.StreamAccessLogs(context.Background())
				if err != nil {
					b.Error(err)
					return
				}
				for range n {
					if err := s.Send(msg); err != nil {
						b.Error(err)
						return
					}
				}
				// The service answers once it has read the whole stream.
				if _, err := s.CloseAndRecv(); err != nil {
					b.Error(err)
				}
			}()
		}
		wg.Wait()
	}
	send(batches / 10) // warm up
	for range b.N {
		var perEntry []float64
		for range rounds {
			c0 := p.cpu(b)
			send(batches)
			perEntry = append(perEntry, float64(p.cpu(b)-c0)/float64(time.Microsecond)/float64(workers*batches*logBatch))
		}
		slices.Sort(perEntry)
		b.ReportMetric(perEntry[len(perEntry)/2], "µs/entry")
		b.Logf("service CPU µs per access-log entry: %v", perEntry)
	}
}
