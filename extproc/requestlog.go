package extproc

import (
	"strconv"
	"strings"

	accesslogdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogsvc "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"

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

// StreamAccessLogs reads one Envoy's access log stream until it ends.
func (a *accessLogService) StreamAccessLogs(srv accesslogsvc.AccessLogService_StreamAccessLogsServer) error {
	for {
		msg, err := srv.Recv()
		if err != nil {
			return nil // io.EOF, a cancelled or broken stream: Envoy reconnects
		}
		entries := msg.GetHttpLogs().GetLogEntry()
		a.metrics.accessLogEntries.Add(float64(len(entries)))
		for _, e := range entries {
			if end, ok := causeOf(e.GetCommonProperties().GetResponseFlags()); ok {
				a.causes.Put(e.GetRequest().GetRequestId(), end)
			}
			if a.sink != nil {
				a.sink.WriteLog(logEntry(e))
			}
		}
	}
}

// logEntry reads what the request log keeps from one access-log entry:
// the standard properties, the request headers the wasm filter and the
// route set (model, bucket, force, sample rate) and the response's version
// header, as envoyconfig.AccessLog asks Envoy to log them.
func logEntry(e *accesslogdata.HTTPAccessLogEntry) LogEntry {
	c, req, resp := e.GetCommonProperties(), e.GetRequest(), e.GetResponse()
	rh := req.GetRequestHeaders()
	l := LogEntry{
		RequestID: req.GetRequestId(),
		Model:     rh[wire.HeaderModel],
		Version:   resp.GetResponseHeaders()[wire.HeaderVersion],
		Cluster:   c.GetUpstreamCluster(),
		Path:      req.GetPath(),
		Status:    int(resp.GetResponseCode().GetValue()),
		BytesIn:   req.GetRequestBodyBytes(),
		BytesOut:  resp.GetResponseBodyBytes(),
		Flags:     FormatResponseFlags(c.GetResponseFlags()),
		Details:   resp.GetResponseCodeDetails(),
		Forced:    rh[wire.HeaderForce] != "",
	}
	if i := strings.IndexByte(l.Path, '?'); i >= 0 {
		l.Path = l.Path[:i]
	}
	if t := c.GetStartTime(); t != nil {
		l.Time = t.AsTime()
	}
	d := c.GetDuration()
	if d == nil {
		d = c.GetTimeToLastDownstreamTxByte()
	}
	if d != nil {
		l.DurationMs = ms(d.AsDuration())
	}
	if b, err := strconv.ParseUint(rh[wire.HeaderBucket], 10, 64); err == nil {
		l.Bucket = b
	}
	if v, ok := rh[wire.HeaderSampleRate]; ok {
		if r, valid := ParseSampleRate(v); valid {
			l.SampleRate = r
		} else {
			l.SampleRate = 1 // measured, at a rate the route wrote wrong: as the ext_proc row counts it
		}
	}
	l.Gateway = l.Details == wire.DetailsDirectResponse || l.Details == wire.DetailsFilterReply ||
		(l.Cluster == "" && l.Version == "")
	return l
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
