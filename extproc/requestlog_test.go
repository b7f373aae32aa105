package extproc

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogsvc "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmcanary/llmcanary/internal/wire"
)

// entry is an access-log entry as Envoy sends it for one request.
type entry struct {
	id, path, cluster, details string
	status                     uint32
	reqHeaders, respHeaders    map[string]string
	flags                      *accesslogdata.ResponseFlags
}

var entryStart = time.Date(2026, 3, 1, 12, 0, 0, 250e6, time.UTC)

func (e entry) proto() *accesslogdata.HTTPAccessLogEntry {
	return &accesslogdata.HTTPAccessLogEntry{
		CommonProperties: &accesslogdata.AccessLogCommon{
			StartTime:       timestamppb.New(entryStart),
			Duration:        durationpb.New(1500 * time.Millisecond),
			UpstreamCluster: e.cluster,
			ResponseFlags:   e.flags,
		},
		ProtocolVersion: accesslogdata.HTTPAccessLogEntry_HTTP11,
		Request: &accesslogdata.HTTPRequestProperties{
			RequestMethod: corev3.RequestMethod_POST, Path: e.path, RequestId: e.id,
			RequestBodyBytes: 120, RequestHeaders: e.reqHeaders,
		},
		Response: &accesslogdata.HTTPResponseProperties{
			ResponseCode: wrapperspb.UInt32(e.status), ResponseBodyBytes: 4096,
			ResponseHeaders: e.respHeaders, ResponseCodeDetails: e.details,
		},
	}
}

func TestLogEntryKeepsWhatTheRequestLogNeeds(t *testing.T) {
	routed := map[string]string{wire.HeaderModel: "llama", wire.HeaderBucket: "12345"}
	with := func(m map[string]string, kv ...string) map[string]string {
		out := map[string]string{}
		for k, v := range m {
			out[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}
	served := map[string]string{wire.HeaderVersion: "v2"}
	tests := []struct {
		name string
		in   entry
		want LogEntry
	}{
		{
			"a measured request served by a version",
			entry{"r1", "/v1/chat/completions?x=1", "llama_v2", "via_upstream", 200, with(routed, wire.HeaderSampleRate, "0.25"), served, nil},
			LogEntry{RequestID: "r1", Model: "llama", Version: "v2", Cluster: "llama_v2", Path: "/v1/chat/completions",
				Status: 200, Details: "via_upstream", Bucket: 12345, SampleRate: 0.25},
		},
		{
			"an unmeasured request has sample rate 0",
			entry{"r2", "/v1/completions", "llama_v1", "via_upstream", 200, routed, map[string]string{wire.HeaderVersion: "v1"}, nil},
			LogEntry{RequestID: "r2", Model: "llama", Version: "v1", Cluster: "llama_v1", Path: "/v1/completions",
				Status: 200, Details: "via_upstream", Bucket: 12345},
		},
		{
			"a forced request the pool reset",
			entry{"r3", "/v1/chat/completions", "llama_v2", "upstream_reset_after_response_started{remote_reset}", 200,
				with(routed, wire.HeaderForce, "v2", wire.HeaderSampleRate, "1"), served,
				&accesslogdata.ResponseFlags{UpstreamRemoteReset: true, DownstreamConnectionTermination: true}},
			LogEntry{RequestID: "r3", Model: "llama", Version: "v2", Cluster: "llama_v2", Path: "/v1/chat/completions",
				Status: 200, Flags: "UR,DC", Details: "upstream_reset_after_response_started{remote_reset}", Bucket: 12345, Forced: true, SampleRate: 1},
		},
		{
			"an opt-in user's request is labelled with its cohort",
			entry{"r6", "/v1/chat/completions", "llama_v2", "via_upstream", 200, with(routed, wire.HeaderAssigned, wire.AssignedOptIn, wire.HeaderSampleRate, "1"), served, nil},
			LogEntry{RequestID: "r6", Model: "llama", Version: "v2", Cluster: "llama_v2", Path: "/v1/chat/completions",
				Status: 200, Details: "via_upstream", Bucket: 12345, Cohort: wire.AssignedOptIn, SampleRate: 1},
		},
		{
			"a route's direct response is the gateway's",
			entry{"r4", "/v1/models", "", wire.DetailsDirectResponse, 200, nil, nil, nil},
			LogEntry{RequestID: "r4", Path: "/v1/models", Status: 200, Details: wire.DetailsDirectResponse, Gateway: true},
		},
		{
			"the wasm filter's reply is the gateway's",
			entry{"r5", "/v1/chat/completions", "", wire.DetailsFilterReply, 400, nil, nil, nil},
			LogEntry{RequestID: "r5", Path: "/v1/chat/completions", Status: 400, Details: wire.DetailsFilterReply, Gateway: true},
		},
		{
			"no route is the gateway's",
			entry{"r6", "/admin", "", "route_not_found", 404, nil, nil, &accesslogdata.ResponseFlags{NoRouteFound: true}},
			LogEntry{RequestID: "r6", Path: "/admin", Status: 404, Flags: "NR", Details: "route_not_found", Gateway: true},
		},
		{
			"a version's pool that could not be reached is the version's",
			entry{"r7", "/v1/chat/completions", "llama_v2", "upstream_reset_before_response_started{connection_failure}", 503, routed, served,
				&accesslogdata.ResponseFlags{UpstreamConnectionFailure: true}},
			LogEntry{RequestID: "r7", Model: "llama", Version: "v2", Cluster: "llama_v2", Path: "/v1/chat/completions",
				Status: 503, Flags: "UF", Details: "upstream_reset_before_response_started{connection_failure}", Bucket: 12345},
		},
		{
			"a malformed rate still marks the request measured, at 1",
			entry{"r8", "/v1/completions", "llama_v1", "via_upstream", 200, with(routed, wire.HeaderSampleRate, "lots"), served, nil},
			LogEntry{RequestID: "r8", Model: "llama", Version: "v2", Cluster: "llama_v1", Path: "/v1/completions",
				Status: 200, Details: "via_upstream", Bucket: 12345, SampleRate: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.want
			want.Time, want.DurationMs, want.BytesIn, want.BytesOut = entryStart, 1500, 120, 4096
			got := decodeEntries(t, tt.in.proto())
			if len(got) != 1 || got[0].e != want {
				t.Fatalf("entry\n got %+v\nwant %+v", got, want)
			}
			if ref := logEntryFromProto(tt.in.proto()); ref != want {
				t.Fatalf("the reference reads\n %+v\nwant %+v", ref, want)
			}
		})
	}
}

// message wraps entries in the message Envoy streams them in.
func message(entries ...*accesslogdata.HTTPAccessLogEntry) *accesslogsvc.StreamAccessLogsMessage {
	return &accesslogsvc.StreamAccessLogsMessage{
		Identifier: &accesslogsvc.StreamAccessLogsMessage_Identifier{LogName: "llmcanary"},
		LogEntries: &accesslogsvc.StreamAccessLogsMessage_HttpLogs{HttpLogs: &accesslogsvc.StreamAccessLogsMessage_HTTPAccessLogEntries{
			LogEntry: entries,
		}},
	}
}

// decodeEntries reads entries through the service's wire-form reader.
func decodeEntries(t *testing.T, entries ...*accesslogdata.HTTPAccessLogEntry) []wireEntry {
	t.Helper()
	b, err := proto.Marshal(message(entries...))
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeAccessLogs(b, nil)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// logEntryFromProto is what the request log keeps of a decoded entry: the
// reference the wire-form reader is checked against.
func logEntryFromProto(e *accesslogdata.HTTPAccessLogEntry) LogEntry {
	c, req, resp := e.GetCommonProperties(), e.GetRequest(), e.GetResponse()
	l := LogEntry{
		RequestID: req.GetRequestId(),
		Cluster:   c.GetUpstreamCluster(),
		Path:      req.GetPath(),
		Status:    int(resp.GetResponseCode().GetValue()),
		BytesIn:   req.GetRequestBodyBytes(),
		BytesOut:  resp.GetResponseBodyBytes(),
		Details:   resp.GetResponseCodeDetails(),
	}
	if t := c.GetStartTime(); t != nil {
		l.Time = t.AsTime()
	}
	d := c.GetDuration()
	if d == nil {
		d = c.GetTimeToLastDownstreamTxByte()
	}
	rh := req.GetRequestHeaders()
	rate, hasRate := rh[wire.HeaderSampleRate]
	fillEntry(&l, entryHeaders{
		duration: d.AsDuration(), flags: c.GetResponseFlags(),
		model: rh[wire.HeaderModel], bucket: rh[wire.HeaderBucket], force: rh[wire.HeaderForce], cohort: rh[wire.HeaderAssigned],
		version: resp.GetResponseHeaders()[wire.HeaderVersion], rate: rate, hasRate: hasRate,
	})
	return l
}

// agreesWithProto compares the wire-form reader with proto.Unmarshal and
// logEntryFromProto on the message b; it describes a difference. A
// message proto.Unmarshal refuses is not compared.
func agreesWithProto(b []byte) string {
	var m accesslogsvc.StreamAccessLogsMessage
	if proto.Unmarshal(b, &m) != nil {
		return ""
	}
	got, err := decodeAccessLogs(b, nil)
	if err != nil {
		return fmt.Sprintf("the reader refuses %x: %v", b, err)
	}
	want := m.GetHttpLogs().GetLogEntry()
	if len(got) != len(want) {
		return fmt.Sprintf("%d entries, proto.Unmarshal %d, in %x", len(got), len(want), b)
	}
	for i, e := range want {
		ref := logEntryFromProto(e)
		if got[i].e != ref {
			return fmt.Sprintf("entry %d:\n got %+v\nwant %+v\nin %x", i, got[i].e, ref, b)
		}
		if causeWant, okWant := causeOf(e.GetCommonProperties().GetResponseFlags()); true {
			if cause, ok := causeOf(got[i].flags); cause != causeWant || ok != okWant {
				return fmt.Sprintf("entry %d: cause %v %v, want %v %v", i, cause, ok, causeWant, okWant)
			}
		}
	}
	return ""
}

func TestAccessLogReaderAgreesWithProtoUnmarshal(t *testing.T) {
	full := func() *accesslogdata.HTTPAccessLogEntry {
		e := benchLogEntry(7)
		e.CommonProperties.ResponseFlags = &accesslogdata.ResponseFlags{UpstreamRemoteReset: true, DownstreamConnectionTermination: true}
		e.Request.RequestHeaders[wire.HeaderForce] = "v7"
		e.Request.RequestHeaders[wire.HeaderAssigned] = wire.AssignedOptIn
		return e
	}
	noDuration := full()
	noDuration.CommonProperties.Duration = nil
	bare := &accesslogdata.HTTPAccessLogEntry{}
	emptyMaps := benchLogEntry(8)
	emptyMaps.Request.RequestHeaders, emptyMaps.Response.ResponseHeaders = nil, nil
	for name, m := range map[string]*accesslogsvc.StreamAccessLogsMessage{
		"one entry as Envoy sends it":   message(full()),
		"forty entries":                 message(benchBatch(40)...),
		"the end of a request's bytes":  message(noDuration),
		"an entry without anything set": message(bare),
		"no headers logged":             message(emptyMaps),
		"no entries":                    message(),
		"tcp logs": {LogEntries: &accesslogsvc.StreamAccessLogsMessage_TcpLogs{
			TcpLogs: &accesslogsvc.StreamAccessLogsMessage_TCPAccessLogEntries{LogEntry: []*accesslogdata.TCPAccessLogEntry{{}}}}},
	} {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if msg := agreesWithProto(b); msg != "" {
			t.Errorf("%s: %s", name, msg)
		}
	}
	// Fields repeated on the wire merge as proto.Unmarshal merges them.
	one, _ := proto.Marshal(message(full()))
	other, _ := proto.Marshal(message(noDuration, bare))
	if msg := agreesWithProto(append(one, other...)); msg != "" {
		t.Errorf("two messages' bytes concatenated: %s", msg)
	}
	tcp, _ := proto.Marshal(&accesslogsvc.StreamAccessLogsMessage{LogEntries: &accesslogsvc.StreamAccessLogsMessage_TcpLogs{
		TcpLogs: &accesslogsvc.StreamAccessLogsMessage_TCPAccessLogEntries{}}})
	if msg := agreesWithProto(append(one, tcp...)); msg != "" {
		t.Errorf("http entries replaced by tcp ones: %s", msg)
	}
}

func FuzzAccessLogReaderAgreesWithProtoUnmarshal(f *testing.F) {
	for _, m := range []*accesslogsvc.StreamAccessLogsMessage{message(benchLogEntry(1)), message(benchBatch(3)...), message(&accesslogdata.HTTPAccessLogEntry{})} {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if msg := agreesWithProto(b); msg != "" {
			t.Fatal(msg)
		}
	})
}

func TestFormatResponseFlagsNamesEveryFlagAsEnvoyDoes(t *testing.T) {
	all := &accesslogdata.ResponseFlags{
		FailedLocalHealthcheck: true, NoHealthyUpstream: true, UpstreamRequestTimeout: true, LocalReset: true,
		UpstreamRemoteReset: true, UpstreamConnectionFailure: true, UpstreamConnectionTermination: true,
		UpstreamOverflow: true, NoRouteFound: true, DelayInjected: true, FaultInjected: true, RateLimited: true,
		UnauthorizedDetails: &accesslogdata.ResponseFlags_Unauthorized{}, RateLimitServiceError: true,
		DownstreamConnectionTermination: true, UpstreamRetryLimitExceeded: true, StreamIdleTimeout: true,
		InvalidEnvoyRequestHeaders: true, DownstreamProtocolError: true, UpstreamMaxStreamDurationReached: true,
		ResponseFromCacheFilter: true, NoFilterConfigFound: true, DurationTimeout: true, UpstreamProtocolError: true,
		NoClusterFound: true, OverloadManager: true, DnsResolutionFailure: true, DownstreamRemoteReset: true,
	}
	const want = "LH,UH,UT,LR,UR,UF,UC,UO,NR,DI,FI,RL,UAEX,RLSE,DC,URX,SI,IH,DPE,UMSDR,RFCF,NFCF,DT,UPE,NC,OM,DF,DR"
	if got := FormatResponseFlags(all); got != want {
		t.Fatalf("all flags: %q\nwant %q", got, want)
	}
	if got := FormatResponseFlags(&accesslogdata.ResponseFlags{}); got != "" {
		t.Fatalf("no flag: %q", got)
	}
	if got := FormatResponseFlags(nil); got != "" {
		t.Fatalf("nil flags: %q", got)
	}
}

// logSink collects access-log entries.
type logSink struct{ ch chan LogEntry }

func (l *logSink) WriteLog(e LogEntry) { l.ch <- e }

// recordAndLogSink is a Sink that is a LogSink too, as the ClickHouse
// writer is.
type recordAndLogSink struct {
	memSink
	logSink
}

func TestAccessLogStreamFeedsTheRequestLogAndResetCauses(t *testing.T) {
	both := &recordAndLogSink{memSink{ch: make(chan Record, 1)}, logSink{ch: make(chan LogEntry, 16)}}
	explicit := &logSink{ch: make(chan LogEntry, 16)}
	tests := []struct {
		name string
		o    Options
		want chan LogEntry // nil: no request log
	}{
		{"a sink that is a log sink gets the entries", Options{Sink: both}, both.logSink.ch},
		{"an explicit request log gets them", Options{Sink: &memSink{ch: make(chan Record, 1)}, RequestLog: explicit}, explicit.ch},
		{"without a log sink entries only tell reset causes", Options{Sink: &memSink{ch: make(chan Record, 1)}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			tt.o.Registerer = reg
			srv, err := NewServer(tt.o)
			if err != nil {
				t.Fatal(err)
			}
			_, addr := serveAt(t, srv)
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			stream, err := accesslogsvc.NewAccessLogServiceClient(conn).StreamAccessLogs(ctx)
			if err != nil {
				t.Fatal(err)
			}
			ok := entry{"ok", "/v1/completions", "llama_v1", "via_upstream", 200, nil, nil, nil}
			cut := entry{"cut", "/v1/completions", "llama_v1", "downstream_remote_disconnect", 200, nil, nil,
				&accesslogdata.ResponseFlags{DownstreamConnectionTermination: true}}
			if err := stream.Send(&accesslogsvc.StreamAccessLogsMessage{
				Identifier: &accesslogsvc.StreamAccessLogsMessage_Identifier{LogName: "llmcanary"},
				LogEntries: &accesslogsvc.StreamAccessLogsMessage_HttpLogs{HttpLogs: &accesslogsvc.StreamAccessLogsMessage_HTTPAccessLogEntries{
					LogEntry: []*accesslogdata.HTTPAccessLogEntry{ok.proto(), cut.proto()},
				}},
			}); err != nil {
				t.Fatal(err)
			}
			if end, found := srv.Causes().Wait("cut", 5*time.Second); !found || end != EndClientCancel {
				t.Fatalf("cause of the cut request: %v %v, want client_cancel", end, found)
			}
			if tt.want != nil {
				for _, id := range []string{"ok", "cut"} {
					select {
					case e := <-tt.want:
						if e.RequestID != id {
							t.Fatalf("entry %q, want %q", e.RequestID, id)
						}
					case <-ctx.Done():
						t.Fatalf("entry %q never reached the request log", id)
					}
				}
			}
			if n := counterValue(t, reg, "llmcanary_extproc_access_log_entries_total"); n != 2 {
				t.Fatalf("entries counted: %v, want 2", n)
			}
		})
	}
}
