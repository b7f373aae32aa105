package extproc

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/llmcanary/llmcanary/extproc/envoyconfig"
)

// view is what the service reads of a ProcessingRequest, comparable
// between the generated code and the wire reader.
type view struct {
	kind          procKind
	headers       []string // "key=value", raw_value preferred
	end           bool
	body          string
	attrs         map[string]string // filter name → request time as read
	observability bool
}

func shownValue(v wireValue) string {
	switch v.kind {
	case valueNumber:
		return fmt.Sprintf("number %v", v.num)
	case valueString:
		return "string " + string(v.str)
	case valueOther:
		return "other"
	}
	return "none"
}

// viaProto reads b through proto.Unmarshal and the getters, as the
// service did before it read the wire form.
func viaProto(b []byte) (view, error) {
	var m extprocv3.ProcessingRequest
	if err := proto.Unmarshal(b, &m); err != nil {
		return view{}, err
	}
	v := view{observability: m.GetObservabilityMode(), attrs: map[string]string{}}
	hdrs := func(hm *corev3.HeaderMap) {
		for _, h := range hm.GetHeaders() {
			val := h.GetValue()
			if len(h.GetRawValue()) > 0 {
				val = string(h.GetRawValue())
			}
			v.headers = append(v.headers, h.GetKey()+"="+val)
		}
	}
	switch r := m.Request.(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		v.kind, v.end = procRequestHeaders, r.RequestHeaders.GetEndOfStream()
		hdrs(r.RequestHeaders.GetHeaders())
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		v.kind, v.end = procResponseHeaders, r.ResponseHeaders.GetEndOfStream()
		hdrs(r.ResponseHeaders.GetHeaders())
	case *extprocv3.ProcessingRequest_RequestBody:
		v.kind, v.end, v.body = procRequestBody, r.RequestBody.GetEndOfStream(), string(r.RequestBody.GetBody())
	case *extprocv3.ProcessingRequest_ResponseBody:
		v.kind, v.end, v.body = procResponseBody, r.ResponseBody.GetEndOfStream(), string(r.ResponseBody.GetBody())
	case *extprocv3.ProcessingRequest_RequestTrailers:
		v.kind = procRequestTrailers
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		v.kind = procResponseTrailers
	}
	for k, s := range m.GetAttributes() {
		f, ok := s.GetFields()[envoyconfig.AttrRequestTime]
		var w wireValue
		switch x := f.GetKind().(type) {
		case *structpb.Value_NumberValue:
			w = wireValue{kind: valueNumber, num: x.NumberValue}
		case *structpb.Value_StringValue:
			w = wireValue{kind: valueString, str: []byte(x.StringValue)}
		case nil:
		default:
			w = wireValue{kind: valueOther}
		}
		if !ok {
			w = wireValue{}
		}
		v.attrs[k] = shownValue(w)
	}
	return v, nil
}

func viaWire(b []byte, w *wireProcessing) (view, error) {
	if err := w.decodeProcessing(b); err != nil {
		return view{}, err
	}
	v := view{kind: w.kind, end: w.endOfStream, body: string(w.body), observability: w.observability, attrs: map[string]string{}}
	for _, h := range w.headers {
		v.headers = append(v.headers, string(h.key)+"="+string(h.value))
	}
	for _, a := range w.attrs {
		v.attrs[string(a.key)] = shownValue(a.requestTime)
	}
	return v, nil
}

func sameView(a, b view) bool {
	return fmt.Sprint(a) == fmt.Sprint(b)
}

// randomRequest builds a ProcessingRequest of every shape the service may
// meet: each case of the oneof, headers with value, raw_value or both,
// attributes whose request time is a string, a number or something else.
func randomRequest(r *rand.Rand) *extprocv3.ProcessingRequest {
	m := &extprocv3.ProcessingRequest{ObservabilityMode: r.IntN(2) == 0}
	hm := func() *corev3.HeaderMap {
		h := &corev3.HeaderMap{}
		keys := []string{":status", ":path", "x-request-id", "Content-Type", "x-llmcanary-version", ""}
		for i := r.IntN(5); i > 0; i-- {
			hv := &corev3.HeaderValue{Key: keys[r.IntN(len(keys))]}
			switch r.IntN(3) {
			case 0:
				hv.Value = fmt.Sprint("v", r.IntN(100))
			case 1:
				hv.RawValue = []byte(fmt.Sprint("raw", r.IntN(100)))
			default:
				hv.Value, hv.RawValue = "both", []byte("raw-wins")
			}
			h.Headers = append(h.Headers, hv)
		}
		return h
	}
	body := make([]byte, r.IntN(40))
	for i := range body {
		body[i] = byte(r.IntN(256))
	}
	end := r.IntN(2) == 0
	switch r.IntN(7) {
	case 0:
		m.Request = &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: hm(), EndOfStream: end}}
	case 1:
		m.Request = &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{Headers: hm(), EndOfStream: end}}
	case 2:
		m.Request = &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: body, EndOfStream: end}}
	case 3:
		m.Request = &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{Body: body, EndOfStream: end}}
	case 4:
		m.Request = &extprocv3.ProcessingRequest_RequestTrailers{RequestTrailers: &extprocv3.HttpTrailers{Trailers: hm()}}
	case 5:
		m.Request = &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: &extprocv3.HttpTrailers{Trailers: hm()}}
	}
	if r.IntN(2) == 0 {
		m.Attributes = map[string]*structpb.Struct{}
		for i := r.IntN(3); i >= 0; i-- {
			s := &structpb.Struct{Fields: map[string]*structpb.Value{"other": structpb.NewBoolValue(true)}}
			switch r.IntN(6) {
			case 0:
				s.Fields[envoyconfig.AttrRequestTime] = structpb.NewStringValue("2026-12-01T05:00:00.123456Z")
			case 1:
				s.Fields[envoyconfig.AttrRequestTime] = structpb.NewNumberValue(1.7e9 + r.Float64())
			case 2:
				s.Fields[envoyconfig.AttrRequestTime] = structpb.NewNullValue()
			case 3:
				s.Fields[envoyconfig.AttrRequestTime] = structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{structpb.NewNumberValue(1)}})
			case 4:
				s.Fields[envoyconfig.AttrRequestTime] = &structpb.Value{} // no kind
			}
			m.Attributes[fmt.Sprint("envoy.filters.http.ext_proc/", r.IntN(3))] = s
		}
	}
	return m
}

// TestWireReaderAgreesWithTheGeneratedCode: over many random messages, and
// over pairs of them concatenated (which protobuf merges: headers add up,
// a later scalar or oneof case wins, a map entry replaces its key's), the
// wire reader reads exactly what proto.Unmarshal and the getters read.
func TestWireReaderAgreesWithTheGeneratedCode(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 5))
	var w wireProcessing // reused, as Process reuses it
	for i := 0; i < 5000; i++ {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(randomRequest(r))
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 1 {
			more, err := proto.Marshal(randomRequest(r))
			if err != nil {
				t.Fatal(err)
			}
			b = append(b, more...)
		}
		want, err := viaProto(b)
		if err != nil {
			t.Fatalf("message %d: proto.Unmarshal: %v", i, err)
		}
		got, err := viaWire(b, &w)
		if err != nil {
			t.Fatalf("message %d: wire reader: %v", i, err)
		}
		if !sameView(got, want) {
			t.Fatalf("message %d (%x):\nwire  %+v\nproto %+v", i, b, got, want)
		}
	}
}

// TestWireReaderRefusesCutMessages: every message cut short inside a
// field is an error, never a panic or a partial read taken as whole.
func TestWireReaderRefusesCutMessages(t *testing.T) {
	m := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{Body: []byte(`data: {"choices":[]}`), EndOfStream: true}}}
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var w wireProcessing
	for n := 1; n < len(b); n++ {
		_, perr := viaProto(b[:n])
		_, werr := viaWire(b[:n], &w)
		if perr != nil && werr == nil {
			t.Fatalf("cut at %d of %d: proto refuses (%v), the wire reader accepts", n, len(b), perr)
		}
	}
}

// FuzzWireReader: whatever bytes arrive, the reader does not panic, and on
// every message proto.Unmarshal accepts it reads what the getters read.
func FuzzWireReader(f *testing.F) {
	r := rand.New(rand.NewPCG(9, 9))
	for i := 0; i < 20; i++ {
		b, _ := proto.Marshal(randomRequest(r))
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var w wireProcessing
		got, werr := viaWire(b, &w)
		want, perr := viaProto(b)
		if perr != nil {
			return
		}
		if werr != nil {
			t.Fatalf("proto accepts %x, the wire reader does not: %v", b, werr)
		}
		if !bytes.Equal([]byte(fmt.Sprint(got)), []byte(fmt.Sprint(want))) {
			t.Fatalf("%x:\nwire  %+v\nproto %+v", b, got, want)
		}
	})
}
