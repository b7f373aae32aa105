package extproc

import (
	"context"
	"encoding/json"
	"math"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/llmcanary/llmcanary/internal/wire"
)

// streamSampleRate reads the sample rate a measured request's stream was
// opened with (wire.MetadataSampleRate, set by the route through
// envoyconfig.PerRoute). A stream without it was measured at rate 1; so
// is one whose value is not a decimal in (0, 1], which valid reports.
func streamSampleRate(ctx context.Context) (rate float64, valid bool) {
	vs := metadata.ValueFromIncomingContext(ctx, wire.MetadataSampleRate)
	if len(vs) == 0 {
		return 1, true
	}
	return ParseSampleRate(vs[0])
}

// streamCapturesAll reports whether the stream was opened asking for its
// text to be kept (wire.MetadataCaptureAll, set by the route through
// envoyconfig.PerRoute).
func streamCapturesAll(ctx context.Context) bool {
	vs := metadata.ValueFromIncomingContext(ctx, wire.MetadataCaptureAll)
	return len(vs) > 0 && vs[0] == "1"
}

// ParseSampleRate reads a sample rate as the route writes it (a decimal in
// (0, 1], see envoyconfig.FormatRate). Anything else yields 1 and false:
// a row of unknown rate counts as one request rather than being lost.
func ParseSampleRate(s string) (float64, bool) {
	r, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || math.IsNaN(r) || r <= 0 || r > 1 {
		return 1, false
	}
	return r, true
}

// applyServed reads what the route sent the request to, which the stream
// was opened with (wire.MetadataCluster and the rest, set by
// envoyconfig.PerRoute): the cluster, the served model and version, and
// their prices. Each is optional; a price that is not a non-negative
// number is ignored, and valid reports it.
func (st *stream) applyServed(ctx context.Context) (valid bool) {
	first := func(key string) string {
		if vs := metadata.ValueFromIncomingContext(ctx, key); len(vs) > 0 {
			return vs[0]
		}
		return ""
	}
	st.rec.Cluster = first(wire.MetadataCluster)
	st.metaModel = first(wire.MetadataModel)
	st.metaVer = first(wire.MetadataVersion)
	valid = true
	for _, p := range []struct {
		key string
		to  *float64
	}{{wire.MetadataPriceInputPer1K, &st.prices.InputPer1K}, {wire.MetadataPriceOutputPer1K, &st.prices.OutputPer1K}} {
		v := first(p.key)
		if v == "" {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || !(f >= 0) || math.IsInf(f, 0) {
			valid = false
			continue
		}
		*p.to = f
	}
	return valid
}

// maxClockSkew bounds how far Envoy's request.time may lie before the
// service's own arrival time and still be trusted as the request's start.
const maxClockSkew = 10 * time.Minute

// applyAttributes reads the attributes Envoy attached to a message: the
// request's start (envoyconfig.AttrRequestTime), the only one asked for.
// They are keyed by the filter's name; the service does not care which
// ext_proc filter sent them, so every entry is read.
func (st *stream) applyAttributes(attrs []wireAttr, now time.Time) {
	for _, a := range attrs {
		if st.startSet {
			return
		}
		if t, ok := timeValue(a.requestTime); ok && !t.After(now) && now.Sub(t) < maxClockSkew {
			st.start, st.startSet = t, true
		}
	}
}

// timeValue accepts an RFC 3339 timestamp string, as Envoy exports CEL
// timestamps, or seconds since the epoch.
func timeValue(v wireValue) (time.Time, bool) {
	switch v.kind {
	case valueString:
		t, err := time.Parse(time.RFC3339Nano, string(v.str))
		return t, err == nil
	case valueNumber:
		return time.Unix(0, int64(v.num*1e9)), v.num > 0
	}
	return time.Time{}, false
}

// streamFlag reads the "stream" field of an OpenAI request body.
func streamFlag(body []byte) (bool, bool) {
	var b struct {
		Stream *bool `json:"stream"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		return false, false
	}
	if b.Stream == nil {
		return false, true
	}
	return *b.Stream, true
}

// promptText extracts the prompt from an OpenAI request body: the chat
// messages as "role: content" lines, or the completion prompt. A body that
// is not such JSON is kept as it is.
func promptText(body []byte) string {
	var b struct {
		Messages []struct {
			Role    string          `json:"role"`
			Content json.RawMessage `json:"content"`
		} `json:"messages"`
		Prompt json.RawMessage `json:"prompt"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		return string(body)
	}
	var sb strings.Builder
	for _, m := range b.Messages {
		sb.WriteString(m.Role)
		sb.WriteString(": ")
		sb.WriteString(rawText(m.Content))
		sb.WriteByte('\n')
	}
	if len(b.Prompt) > 0 {
		sb.WriteString(rawText(b.Prompt))
	}
	if sb.Len() == 0 {
		return string(body)
	}
	return sb.String()
}

// rawText renders a JSON string as its text and anything else (content
// parts, token arrays) as compact JSON.
func rawText(raw json.RawMessage) string {
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s
	}
	return string(raw)
}
