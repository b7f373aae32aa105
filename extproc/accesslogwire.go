package extproc

import (
	"errors"
	"time"

	accesslogdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/llmcanary/llmcanary/internal/wire"
)

// The access log service reads Envoy's StreamAccessLogsMessages from their
// wire form, and only the fields the request log keeps. Envoy's entries
// carry some thirty fields — addresses, a dozen timings, header maps — and
// decoding all of them through the generic protobuf code cost the service
// 7.5 µs per request, nine tenths of its work per entry; reading them here
// costs it 2.6 µs in all (BenchmarkAccessLogServiceCPU). Tests check that
// this reader agrees with proto.Unmarshal followed by the getters on every
// message proto.Unmarshal accepts.

// Field numbers of envoy.service.accesslog.v3 and envoy.data.accesslog.v3.
const (
	fieldMsgHTTPLogs = 2 // StreamAccessLogsMessage.http_logs
	fieldMsgTCPLogs  = 3 // StreamAccessLogsMessage.tcp_logs (the same oneof)
	fieldLogEntry    = 1 // HTTPAccessLogEntries.log_entry

	fieldEntryCommon   = 1 // HTTPAccessLogEntry.common_properties
	fieldEntryRequest  = 3
	fieldEntryResponse = 4

	fieldCommonStartTime  = 5  // AccessLogCommon.start_time
	fieldCommonLastTxByte = 12 // time_to_last_downstream_tx_byte
	fieldCommonCluster    = 15 // upstream_cluster
	fieldCommonFlags      = 16 // response_flags
	fieldCommonDuration   = 23 // duration

	fieldReqPath      = 5 // HTTPRequestProperties.path
	fieldReqID        = 9
	fieldReqBodyBytes = 12
	fieldReqHeaders   = 13

	fieldRespCode      = 1 // HTTPResponseProperties.response_code
	fieldRespBodyBytes = 3
	fieldRespHeaders   = 4
	fieldRespDetails   = 6
)

var (
	errAccessLogWire = errors.New("malformed access log message")
	// errWireFormat is fields' error: a tag, a length or a value is cut short
	// or invalid.
	errWireFormat = errors.New("malformed protobuf wire format")
)

// wireEntry is one HTTP access-log entry as the service reads it.
type wireEntry struct {
	e     LogEntry
	flags *accesslogdata.ResponseFlags // nil when the entry carries none
	// headers collected from the maps, turned into LogEntry fields at the end
	model, bucket, force, rate, version string
	cohort                              string
	hasRate                             bool
	start, duration, lastTx             secondsNanos
	hasStart, hasDuration, hasLastTx    bool
}

// secondsNanos is a google.protobuf.Timestamp or Duration as read.
type secondsNanos struct{ sec, nsec int64 }

// decodeAccessLogs appends to out the HTTP entries of the wire-form
// StreamAccessLogsMessage b, in order.
func decodeAccessLogs(b []byte, out []wireEntry) ([]wireEntry, error) {
	start := len(out)
	err := fields(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		switch {
		case num == fieldMsgHTTPLogs && typ == protowire.BytesType:
			return fields(v, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
				if num != fieldLogEntry || typ != protowire.BytesType {
					return nil
				}
				var we wireEntry
				if err := we.decode(v); err != nil {
					return err
				}
				out = append(out, we)
				return nil
			})
		case num == fieldMsgTCPLogs && typ == protowire.BytesType:
			out = out[:start] // the oneof now holds TCP entries, which the request log has no use for
		}
		return nil
	})
	if err != nil {
		return out[:start], err
	}
	for i := start; i < len(out); i++ {
		out[i].finish()
	}
	return out, nil
}

// fields calls fn for each field of the message b, with the value of a
// length-delimited field in v and of a varint or fixed-size field in n (a
// group's is in neither).
func fields(b []byte, fn func(num protowire.Number, typ protowire.Type, v []byte, n uint64) error) error {
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return errWireFormat
		}
		b = b[l:]
		var v []byte
		var n uint64
		switch typ {
		case protowire.BytesType:
			v, l = protowire.ConsumeBytes(b)
		case protowire.VarintType:
			n, l = protowire.ConsumeVarint(b)
		case protowire.Fixed64Type:
			n, l = protowire.ConsumeFixed64(b)
		case protowire.Fixed32Type:
			var n32 uint32
			n32, l = protowire.ConsumeFixed32(b)
			n = uint64(n32)
		default:
			l = protowire.ConsumeFieldValue(num, typ, b)
		}
		if l < 0 {
			return errWireFormat
		}
		b = b[l:]
		if err := fn(num, typ, v, n); err != nil {
			return err
		}
	}
	return nil
}

func (w *wireEntry) decode(b []byte) error {
	return fields(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case fieldEntryCommon:
			return w.common(v)
		case fieldEntryRequest:
			return w.request(v)
		case fieldEntryResponse:
			return w.response(v)
		}
		return nil
	})
}

func (w *wireEntry) common(b []byte) error {
	return fields(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case fieldCommonStartTime:
			w.hasStart = true
			return w.start.merge(v)
		case fieldCommonDuration:
			w.hasDuration = true
			return w.duration.merge(v)
		case fieldCommonLastTxByte:
			w.hasLastTx = true
			return w.lastTx.merge(v)
		case fieldCommonCluster:
			w.e.Cluster = string(v)
		case fieldCommonFlags:
			if w.flags == nil {
				w.flags = &accesslogdata.ResponseFlags{}
			}
			// Rare (only requests that ended badly carry a flag) and small:
			// the generic decoder is fine here.
			if err := (proto.UnmarshalOptions{Merge: true}).Unmarshal(v, w.flags); err != nil {
				return errAccessLogWire
			}
		}
		return nil
	})
}

func (w *wireEntry) request(b []byte) error {
	return fields(b, func(num protowire.Number, typ protowire.Type, v []byte, n uint64) error {
		switch {
		case num == fieldReqPath && typ == protowire.BytesType:
			w.e.Path = string(v)
		case num == fieldReqID && typ == protowire.BytesType:
			w.e.RequestID = string(v)
		case num == fieldReqBodyBytes && typ == protowire.VarintType:
			w.e.BytesIn = n
		case num == fieldReqHeaders && typ == protowire.BytesType:
			k, val, err := mapEntry(v)
			switch string(k) { // compared without a copy; only the values kept are
			case wire.HeaderModel:
				w.model = string(val)
			case wire.HeaderBucket:
				w.bucket = string(val)
			case wire.HeaderForce:
				w.force = string(val)
			case wire.HeaderAssigned:
				w.cohort = string(val)
			case wire.HeaderSampleRate:
				w.rate, w.hasRate = string(val), true
			}
			return err
		}
		return nil
	})
}

func (w *wireEntry) response(b []byte) error {
	return fields(b, func(num protowire.Number, typ protowire.Type, v []byte, n uint64) error {
		switch {
		case num == fieldRespCode && typ == protowire.BytesType:
			return fields(v, func(num protowire.Number, typ protowire.Type, _ []byte, n uint64) error {
				if num == 1 && typ == protowire.VarintType { // UInt32Value.value
					w.e.Status = int(uint32(n))
				}
				return nil
			})
		case num == fieldRespBodyBytes && typ == protowire.VarintType:
			w.e.BytesOut = n
		case num == fieldRespHeaders && typ == protowire.BytesType:
			k, val, err := mapEntry(v)
			if string(k) == wire.HeaderVersion {
				w.version = string(val)
			}
			return err
		case num == fieldRespDetails && typ == protowire.BytesType:
			w.e.Details = string(v)
		}
		return nil
	})
}

// mapEntry reads one entry of a map<string, string>; key and value alias b.
func mapEntry(b []byte) (key, value []byte, err error) {
	key, err = mapEntryFunc(b, func(v []byte) error { value = v; return nil })
	return key, value, err
}

// merge reads a Timestamp or Duration (seconds 1, nanos 2) onto t.
func (t *secondsNanos) merge(b []byte) error {
	return fields(b, func(num protowire.Number, typ protowire.Type, _ []byte, n uint64) error {
		if typ != protowire.VarintType {
			return nil
		}
		switch num {
		case 1:
			t.sec = int64(n)
		case 2:
			t.nsec = int64(int32(n))
		}
		return nil
	})
}

// finish turns what was read into the LogEntry, as the decoded message's
// getters would give it.
func (w *wireEntry) finish() {
	if w.hasStart {
		w.e.Time = (&timestamppb.Timestamp{Seconds: w.start.sec, Nanos: int32(w.start.nsec)}).AsTime()
	}
	var d time.Duration
	switch {
	case w.hasDuration:
		d = (&durationpb.Duration{Seconds: w.duration.sec, Nanos: int32(w.duration.nsec)}).AsDuration()
	case w.hasLastTx:
		d = (&durationpb.Duration{Seconds: w.lastTx.sec, Nanos: int32(w.lastTx.nsec)}).AsDuration()
	}
	fillEntry(&w.e, entryHeaders{
		duration: d, flags: w.flags, model: w.model, bucket: w.bucket, force: w.force,
		version: w.version, rate: w.rate, hasRate: w.hasRate, cohort: w.cohort,
	})
}
