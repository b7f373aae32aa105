package extproc

import (
	"errors"
	"io"
	"strconv"
	"strings"
	"time"

	accesslogdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogsvc "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/llmcanary/llmcanary/internal/wire"
)

// accessLogService reads Envoy's gRPC access log (envoyconfig.AccessLog),
// which carries an entry for every request: each entry becomes a LogEntry
// for the log sink, and one that carries a reset flag tells ResetCauses
// who cut its request off. Envoy batches entries and never waits for the
// service, so reading them costs a request nothing. Safe for concurrent
// streams.
type accessLogService struct {
	accesslogsvc.UnimplementedAccessLogServiceServer

	causes  *ResetCauses
	sink    LogSink // nil: the entries only feed causes
	metrics *metrics
}

var _ accesslogsvc.AccessLogServiceServer = (*accessLogService)(nil)

// StreamAccessLogs reads one Envoy's access log stream until it ends. Its
// messages are read from their wire form (decodeAccessLogs), so they are
// received as an emptypb.Empty, which keeps every field as unknown bytes.
func (a *accessLogService) StreamAccessLogs(srv accesslogsvc.AccessLogService_StreamAccessLogsServer) error {
	var raw emptypb.Empty
	var entries []wireEntry
	for {
		err := srv.RecvMsg(&raw)
		if errors.Is(err, io.EOF) {
			return srv.SendAndClose(&accesslogsvc.StreamAccessLogsResponse{})
		}
		if err != nil {
			return nil // a cancelled or broken stream: Envoy reconnects
		}
		entries, err = decodeAccessLogs(raw.ProtoReflect().GetUnknown(), entries[:0])
		if err != nil {
			a.metrics.accessLogMalformed.Inc()
			continue
		}
		a.metrics.accessLogEntries.Add(float64(len(entries)))
		for i := range entries {
			e := &entries[i]
			if end, ok := causeOf(e.flags); ok {
				a.causes.Put(e.e.RequestID, end)
			}
			if a.sink != nil {
				a.sink.WriteLog(e.e)
			}
		}
	}
}

// entryHeaders are the parts of an access-log entry that fillEntry turns
// into LogEntry fields.
type entryHeaders struct {
	duration                            time.Duration
	flags                               *accesslogdata.ResponseFlags
	model, bucket, force, version, rate string // header values; rate only when hasRate
	cohort                              string
	hasRate                             bool
}

// fillEntry completes l, whose plain fields (time, id, cluster, path,
// status, bytes, details) are set, from the rest of its entry: the request
// headers the wasm filter and the route set (model, bucket, force, sample
// rate) and the response's version header, as envoyconfig.AccessLog asks
// Envoy to log them.
func fillEntry(l *LogEntry, h entryHeaders) {
	l.Model, l.Version, l.Forced, l.Cohort = h.model, h.version, h.force != "", h.cohort
	l.DurationMs = ms(h.duration)
	l.Flags = FormatResponseFlags(h.flags)
	if i := strings.IndexByte(l.Path, '?'); i >= 0 {
		l.Path = l.Path[:i]
	}
	if b, err := strconv.ParseUint(h.bucket, 10, 64); err == nil {
		l.Bucket = b
	}
	if h.hasRate {
		// A rate the route wrote wrong still marks the request measured,
		// at 1, as its ext_proc row counts it.
		l.SampleRate, _ = ParseSampleRate(h.rate)
	}
	l.Gateway = l.Details == wire.DetailsDirectResponse || l.Details == wire.DetailsFilterReply ||
		(l.Cluster == "" && l.Version == "")
}

// responseFlagCodes are Envoy's short names of its response flags (as in
// %RESPONSE_FLAGS%), in Envoy's order.
var responseFlagCodes = []struct {
	code string
	set  func(*accesslogdata.ResponseFlags) bool
}{
	{"LH", (*accesslogdata.ResponseFlags).GetFailedLocalHealthcheck},
	{"UH", (*accesslogdata.ResponseFlags).GetNoHealthyUpstream},
	{"UT", (*accesslogdata.ResponseFlags).GetUpstreamRequestTimeout},
	{"LR", (*accesslogdata.ResponseFlags).GetLocalReset},
	{"UR", (*accesslogdata.ResponseFlags).GetUpstreamRemoteReset},
	{"UF", (*accesslogdata.ResponseFlags).GetUpstreamConnectionFailure},
	{"UC", (*accesslogdata.ResponseFlags).GetUpstreamConnectionTermination},
	{"UO", (*accesslogdata.ResponseFlags).GetUpstreamOverflow},
	{"NR", (*accesslogdata.ResponseFlags).GetNoRouteFound},
	{"DI", (*accesslogdata.ResponseFlags).GetDelayInjected},
	{"FI", (*accesslogdata.ResponseFlags).GetFaultInjected},
	{"RL", (*accesslogdata.ResponseFlags).GetRateLimited},
	{"UAEX", func(f *accesslogdata.ResponseFlags) bool { return f.GetUnauthorizedDetails() != nil }},
	{"RLSE", (*accesslogdata.ResponseFlags).GetRateLimitServiceError},
	{"DC", (*accesslogdata.ResponseFlags).GetDownstreamConnectionTermination},
	{"URX", (*accesslogdata.ResponseFlags).GetUpstreamRetryLimitExceeded},
	{"SI", (*accesslogdata.ResponseFlags).GetStreamIdleTimeout},
	{"IH", (*accesslogdata.ResponseFlags).GetInvalidEnvoyRequestHeaders},
	{"DPE", (*accesslogdata.ResponseFlags).GetDownstreamProtocolError},
	{"UMSDR", (*accesslogdata.ResponseFlags).GetUpstreamMaxStreamDurationReached},
	{"RFCF", (*accesslogdata.ResponseFlags).GetResponseFromCacheFilter},
	{"NFCF", (*accesslogdata.ResponseFlags).GetNoFilterConfigFound},
	{"DT", (*accesslogdata.ResponseFlags).GetDurationTimeout},
	{"UPE", (*accesslogdata.ResponseFlags).GetUpstreamProtocolError},
	{"NC", (*accesslogdata.ResponseFlags).GetNoClusterFound},
	{"OM", (*accesslogdata.ResponseFlags).GetOverloadManager},
	{"DF", (*accesslogdata.ResponseFlags).GetDnsResolutionFailure},
	{"DR", (*accesslogdata.ResponseFlags).GetDownstreamRemoteReset},
}

// FormatResponseFlags writes the flags set in f by their short names,
// comma separated, as Envoy's %RESPONSE_FLAGS% does; "" when none is.
func FormatResponseFlags(f *accesslogdata.ResponseFlags) string {
	if f == nil {
		return ""
	}
	var b strings.Builder
	for _, c := range responseFlagCodes {
		if c.set(f) {
			if b.Len() > 0 {
				b.WriteByte(',')
			}
			b.WriteString(c.code)
		}
	}
	return b.String()
}
