package extproc

import (
	"bytes"
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/llmcanary/llmcanary/extproc/envoyconfig"
)

// The telemetry service reads Envoy's ProcessingRequests from their wire
// form, and only what a stream uses: which message it is, the headers'
// keys and values, end_of_stream, the body, the request-time attribute and
// observability_mode. Process receives each message as an emptypb.Empty,
// which keeps every field as unknown bytes, and decodeProcessing reads
// them in place. The generic protobuf code allocates a HeaderValue per
// header, and a map, a Struct and a Value per attribute, for every
// message. Tests check that this reader agrees with proto.Unmarshal and
// the getters on every message proto.Unmarshal accepts.

// Field numbers of envoy.service.ext_proc.v3, envoy.config.core.v3 and
// google.protobuf.Struct.
const (
	// ProcessingRequest: the request oneof, then the rest.
	fieldProcRequestHeaders   = 2
	fieldProcResponseHeaders  = 3
	fieldProcRequestBody      = 4
	fieldProcResponseBody     = 5
	fieldProcRequestTrailers  = 6
	fieldProcResponseTrailers = 7
	fieldProcAttributes       = 9  // map<string, google.protobuf.Struct>
	fieldProcObservability    = 10 // observability_mode

	fieldHeadersMap = 1 // HttpHeaders.headers (a HeaderMap)
	fieldHeadersEnd = 3 // HttpHeaders.end_of_stream
	fieldBodyBytes  = 1 // HttpBody.body
	fieldBodyEnd    = 2 // HttpBody.end_of_stream

	fieldMapHeader      = 1 // HeaderMap.headers (a HeaderValue each)
	fieldHeaderKey      = 1 // HeaderValue.key
	fieldHeaderValue    = 2 // HeaderValue.value
	fieldHeaderRawValue = 3 // HeaderValue.raw_value

	fieldMapKey   = 1 // a map entry's key
	fieldMapValue = 2 // a map entry's value

	fieldStructFields = 1 // Struct.fields, map<string, Value>
	fieldValueNull    = 1 // Value.null_value
	fieldValueNumber  = 2
	fieldValueString  = 3
	fieldValueBool    = 4
	fieldValueStruct  = 5
	fieldValueList    = 6
)

// procKind is which case of ProcessingRequest's request oneof a message
// holds.
type procKind uint8

const (
	procNone procKind = iota // the oneof is not set
	procRequestHeaders
	procResponseHeaders
	procRequestBody
	procResponseBody
	procRequestTrailers
	procResponseTrailers
)

// procKindOf returns the case a field number of the request oneof is.
func procKindOf(num protowire.Number) procKind {
	switch num {
	case fieldProcRequestHeaders:
		return procRequestHeaders
	case fieldProcResponseHeaders:
		return procResponseHeaders
	case fieldProcRequestBody:
		return procRequestBody
	case fieldProcResponseBody:
		return procResponseBody
	case fieldProcRequestTrailers:
		return procRequestTrailers
	case fieldProcResponseTrailers:
		return procResponseTrailers
	}
	return procNone
}

// wireProcessing is one ProcessingRequest as the service reads it. Its
// byte slices alias the received message: whatever a stream keeps it
// copies.
type wireProcessing struct {
	kind procKind
	// headers are the request or response headers, in order.
	headers []wireHeader
	// endOfStream is the headers' or the body's end_of_stream.
	endOfStream bool
	body        []byte
	// attrs are the entries of the attributes map (one per filter name,
	// the last of its name on the wire), in wire order.
	attrs         []wireAttr
	observability bool
}

// wireHeader is one HeaderValue: value is its raw_value when that is not
// empty, else its value (Envoy sends raw_value).
type wireHeader struct{ key, value []byte }

// wireAttr is one entry of the attributes map: the filter's name and the
// field of its Struct the service reads, envoyconfig.AttrRequestTime.
type wireAttr struct {
	key         []byte
	requestTime wireValue
}

// valueKind is what a google.protobuf.Value holds, as far as the service
// cares.
type valueKind uint8

const (
	valueNone   valueKind = iota // no such field, or a Value of no kind
	valueNumber                  // number_value, in num
	valueString                  // string_value, in str
	valueOther                   // null, bool, struct or list
)

// wireValue is a google.protobuf.Value as the service reads it.
type wireValue struct {
	kind valueKind
	num  float64
	str  []byte
}

// decodeProcessing reads the wire-form ProcessingRequest b into w, reusing
// w's slices. A field of an unexpected wire type is skipped, as
// proto.Unmarshal keeps it as an unknown field.
func (w *wireProcessing) decodeProcessing(b []byte) error {
	*w = wireProcessing{headers: w.headers[:0], attrs: w.attrs[:0]}
	err := fields(b, func(num protowire.Number, typ protowire.Type, v []byte, n uint64) error {
		switch {
		case num == fieldProcObservability && typ == protowire.VarintType:
			w.observability = n != 0
		case num == fieldProcAttributes && typ == protowire.BytesType:
			if err := w.attribute(v); err != nil {
				return fmt.Errorf("attributes: %w", err)
			}
		case typ == protowire.BytesType:
			if k := procKindOf(num); k != procNone {
				if err := w.request(k, v); err != nil {
					return fmt.Errorf("field %d: %w", num, err)
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("ext_proc message: %w", err)
	}
	return nil
}

// request reads one occurrence of the request oneof's case k. Another
// occurrence of the same case merges into it, as proto.Unmarshal merges
// it (headers add up, a later end_of_stream or body wins); one of another
// case replaces it.
func (w *wireProcessing) request(k procKind, b []byte) error {
	if k != w.kind {
		w.kind, w.headers, w.endOfStream, w.body = k, w.headers[:0], false, nil
	}
	switch k {
	case procRequestHeaders, procResponseHeaders:
		return fields(b, func(num protowire.Number, typ protowire.Type, v []byte, n uint64) error {
			switch {
			case num == fieldHeadersMap && typ == protowire.BytesType:
				return w.headerMap(v)
			case num == fieldHeadersEnd && typ == protowire.VarintType:
				w.endOfStream = n != 0
			}
			return nil
		})
	case procRequestBody, procResponseBody:
		return fields(b, func(num protowire.Number, typ protowire.Type, v []byte, n uint64) error {
			switch {
			case num == fieldBodyBytes && typ == protowire.BytesType:
				w.body = v
			case num == fieldBodyEnd && typ == protowire.VarintType:
				w.endOfStream = n != 0
			}
			return nil
		})
	}
	// Trailers: only their arrival matters, but their bytes must parse.
	return fields(b, func(protowire.Number, protowire.Type, []byte, uint64) error { return nil })
}

// headerMap appends the headers of a HeaderMap.
func (w *wireProcessing) headerMap(b []byte) error {
	return each(b, fieldMapHeader, func(v []byte) error {
		var key, value, raw []byte
		err := fields(v, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
			if typ != protowire.BytesType {
				return nil
			}
			switch num {
			case fieldHeaderKey:
				key = v
			case fieldHeaderValue:
				value = v
			case fieldHeaderRawValue:
				raw = v
			}
			return nil
		})
		if len(raw) > 0 {
			value = raw
		}
		w.headers = append(w.headers, wireHeader{key: key, value: value})
		return err
	})
}

// attribute reads one entry of the attributes map. An entry whose key
// came before replaces it, as in a map.
func (w *wireProcessing) attribute(b []byte) error {
	var a wireAttr
	key, err := mapEntryFunc(b, func(v []byte) error { // a Struct
		return a.requestTime.structField(v, envoyconfig.AttrRequestTime)
	})
	if err != nil {
		return err
	}
	a.key = key
	for i := range w.attrs {
		if bytes.Equal(w.attrs[i].key, a.key) {
			w.attrs[i] = a
			return nil
		}
	}
	w.attrs = append(w.attrs, a)
	return nil
}

// structField reads the field name of the google.protobuf.Struct b onto x:
// an entry of that name replaces x, as in a map; x is untouched when there
// is none.
func (x *wireValue) structField(b []byte, name string) error {
	return each(b, fieldStructFields, func(v []byte) error {
		var val wireValue
		key, err := mapEntryFunc(v, val.merge) // a Value
		if err == nil && string(key) == name {
			*x = val
		}
		return err
	})
}

// each calls fn with every element of the repeated message field num of
// message b, in wire order.
func each(b []byte, num protowire.Number, fn func(v []byte) error) error {
	return fields(b, func(n protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if n != num || typ != protowire.BytesType {
			return nil
		}
		return fn(v)
	})
}

// mapEntryFunc reads a map entry: its key, and its value through value,
// called for each occurrence (protobuf merges a message's).
func mapEntryFunc(b []byte, value func(v []byte) error) (key []byte, err error) {
	err = fields(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case fieldMapKey:
			key = v
		case fieldMapValue:
			return value(v)
		}
		return nil
	})
	return key, err
}

// merge reads a google.protobuf.Value onto x: the last kind set wins. Only
// a number's or a string's content is read; a struct's or list's bytes
// must still parse.
func (x *wireValue) merge(b []byte) error {
	return fields(b, func(num protowire.Number, typ protowire.Type, v []byte, n uint64) error {
		switch {
		case num == fieldValueNumber && typ == protowire.Fixed64Type:
			*x = wireValue{kind: valueNumber, num: math.Float64frombits(n)}
		case num == fieldValueString && typ == protowire.BytesType:
			*x = wireValue{kind: valueString, str: v}
		case (num == fieldValueNull || num == fieldValueBool) && typ == protowire.VarintType:
			*x = wireValue{kind: valueOther}
		case (num == fieldValueStruct || num == fieldValueList) && typ == protowire.BytesType:
			*x = wireValue{kind: valueOther}
		}
		return nil
	})
}
