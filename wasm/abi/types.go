// Package abi is a thin proxy-wasm ABI 0.2.1 binding for upstream Go's
// wasip1 reactor (GOOS=wasip1 GOARCH=wasm -buildmode=c-shared).
//
// Its API is shaped like tetratelabs/proxy-wasm-go-sdk's proxywasm package —
// a VM context creates plugin (root) contexts, a plugin context creates one
// HTTP context per stream, and host calls are plain functions — so the filter
// can move to the SDK once it builds with upstream Go. Only what an HTTP
// filter needs is bound: logging, buffers, header maps, local responses and
// stream continuation.
//
// The module's exports (proxy_on_*) live in exports_wasip1.go; on other
// platforms the host calls return ErrUnimplemented so that the package and
// its users build and vet natively.
package abi

import (
	"errors"
	"strconv"
	"unsafe"
)

// Action is what a callback tells the host to do with the stream.
type Action uint32

// Actions of proxy_action_t.
const (
	ActionContinue Action = 0
	ActionPause    Action = 1
)

// LogLevel is proxy_log_level_t.
type LogLevel uint32

// Log levels of proxy_log_level_t.
const (
	LogLevelTrace    LogLevel = 0
	LogLevelDebug    LogLevel = 1
	LogLevelInfo     LogLevel = 2
	LogLevelWarn     LogLevel = 3
	LogLevelError    LogLevel = 4
	LogLevelCritical LogLevel = 5
)

// Status is proxy_status_t, the result of every host call.
type Status uint32

// Statuses of proxy_status_t.
const (
	StatusOK                   Status = 0
	StatusNotFound             Status = 1
	StatusBadArgument          Status = 2
	StatusSerializationFailure Status = 3
	StatusParseFailure         Status = 4
	StatusInvalidMemoryAccess  Status = 6
	StatusEmpty                Status = 7
	StatusCASMismatch          Status = 8
	StatusInternalFailure      Status = 10
	StatusUnimplemented        Status = 12
)

// BufferType is proxy_buffer_type_t.
type BufferType uint32

// Buffer types of proxy_buffer_type_t.
const (
	BufferHTTPRequestBody     BufferType = 0
	BufferHTTPResponseBody    BufferType = 1
	BufferVMConfiguration     BufferType = 6
	BufferPluginConfiguration BufferType = 7
)

// MapType is proxy_map_type_t.
type MapType uint32

// Map types of proxy_map_type_t.
const (
	MapHTTPRequestHeaders   MapType = 0
	MapHTTPRequestTrailers  MapType = 1
	MapHTTPResponseHeaders  MapType = 2
	MapHTTPResponseTrailers MapType = 3
)

// StreamType is proxy_stream_type_t.
type StreamType uint32

// Stream types of proxy_stream_type_t.
const (
	StreamHTTPRequest  StreamType = 0
	StreamHTTPResponse StreamType = 1
)

// Errors a host call can return. ErrNotFound is the "no such header or
// buffer" outcome callers are expected to check with errors.Is.
var (
	ErrNotFound         = errors.New("proxy-wasm: not found")
	ErrBadArgument      = errors.New("proxy-wasm: bad argument")
	ErrInvalidMemory    = errors.New("proxy-wasm: invalid memory access")
	ErrEmpty            = errors.New("proxy-wasm: empty")
	ErrInternalFailure  = errors.New("proxy-wasm: internal failure")
	ErrUnimplemented    = errors.New("proxy-wasm: unimplemented")
	ErrUnexpectedStatus = errors.New("proxy-wasm: unexpected status")
)

// StatusToError maps a host status to nil or one of the package's errors.
func StatusToError(s Status) error {
	switch s {
	case StatusOK:
		return nil
	case StatusNotFound:
		return ErrNotFound
	case StatusBadArgument:
		return ErrBadArgument
	case StatusInvalidMemoryAccess:
		return ErrInvalidMemory
	case StatusEmpty:
		return ErrEmpty
	case StatusInternalFailure:
		return ErrInternalFailure
	case StatusUnimplemented:
		return ErrUnimplemented
	default:
		return wrapError(strconv.FormatUint(uint64(s), 10), ErrUnexpectedStatus)
	}
}

// opError is err in the context of op: "op: err". The module keeps fmt out
// of its code (V8 compiles every function of the module before Envoy
// serves), so errors are wrapped by hand.
type opError struct {
	op  string
	err error
}

func (e *opError) Error() string { return e.op + ": " + e.err.Error() }
func (e *opError) Unwrap() error { return e.err }

func wrapError(op string, err error) error { return &opError{op: op, err: err} }

// VMContext is the module-wide context. The host creates it once per VM;
// it creates a PluginContext per plugin configuration.
type VMContext interface {
	// OnVMStart is called once with the size of the VM configuration.
	OnVMStart(vmConfigurationSize int) bool
	// NewPluginContext creates the root context of one plugin.
	NewPluginContext(contextID uint32) PluginContext
}

// PluginContext is a plugin's root context. It receives the plugin
// configuration, each time the host (re)configures the plugin, and creates
// one HttpContext per HTTP stream. A retired plugin is deleted without
// notice (proxy_on_done is not exported; Envoy then takes it as done).
type PluginContext interface {
	// OnPluginStart is called with the size of the plugin configuration;
	// returning false rejects the configuration.
	OnPluginStart(pluginConfigurationSize int) bool
	// NewHttpContext creates the context of one HTTP stream.
	NewHttpContext(contextID uint32) HttpContext
}

// HttpContext handles one HTTP request. Callbacks for one stream never run
// concurrently: a VM is single-threaded.
//
// Only the request's callbacks are bound. The module does not export the
// response callbacks (proxy_on_response_*) nor proxy_on_log and
// proxy_on_done, so Envoy does not enter the VM for each response chunk or
// at a stream's end: every entry costs Envoy CPU, and llmcanary's response
// headers come from the route. A filter that needs them binds them here
// and in exports_wasip1.go.
type HttpContext interface {
	OnHttpRequestHeaders(numHeaders int, endOfStream bool) Action
	OnHttpRequestBody(bodySize int, endOfStream bool) Action
	OnHttpRequestTrailers(numTrailers int) Action
}

// HttpStreamDeleter is an HttpContext that wants to know when the host
// deletes it (proxy_on_delete, a stream's last callback), for instance to
// reuse its memory for a later stream. Nothing of the stream is called
// after OnHttpStreamDelete.
type HttpStreamDeleter interface {
	OnHttpStreamDelete()
}

// DefaultVMContext accepts any VM configuration and creates
// DefaultPluginContexts. Embed it to override only what is needed.
type DefaultVMContext struct{}

// OnVMStart implements VMContext.
func (DefaultVMContext) OnVMStart(int) bool { return true }

// NewPluginContext implements VMContext.
func (DefaultVMContext) NewPluginContext(uint32) PluginContext { return DefaultPluginContext{} }

// DefaultPluginContext accepts any configuration and creates
// DefaultHttpContexts.
type DefaultPluginContext struct{}

// OnPluginStart implements PluginContext.
func (DefaultPluginContext) OnPluginStart(int) bool { return true }

// NewHttpContext implements PluginContext.
func (DefaultPluginContext) NewHttpContext(uint32) HttpContext { return DefaultHttpContext{} }

// DefaultHttpContext continues every callback.
type DefaultHttpContext struct{}

// OnHttpRequestHeaders implements HttpContext.
func (DefaultHttpContext) OnHttpRequestHeaders(int, bool) Action { return ActionContinue }

// OnHttpRequestBody implements HttpContext.
func (DefaultHttpContext) OnHttpRequestBody(int, bool) Action { return ActionContinue }

// OnHttpRequestTrailers implements HttpContext.
func (DefaultHttpContext) OnHttpRequestTrailers(int) Action { return ActionContinue }

var (
	_ VMContext     = DefaultVMContext{}
	_ PluginContext = DefaultPluginContext{}
	_ HttpContext   = DefaultHttpContext{}
)

// ErrMalformedMap reports a serialized header map that does not follow the
// ABI's layout.
var ErrMalformedMap = errors.New("proxy-wasm: malformed serialized map")

// SerializeMap encodes pairs in the ABI's map layout: a little-endian
// uint32 count, the (key length, value length) uint32 pairs, then each key
// and value followed by a NUL byte.
func SerializeMap(pairs [][2]string) []byte {
	if len(pairs) == 0 {
		return nil
	}
	size := 4
	for _, p := range pairs {
		size += 8 + len(p[0]) + 1 + len(p[1]) + 1
	}
	b := appendUint32(make([]byte, 0, size), uint32(len(pairs)))
	for _, p := range pairs {
		b = appendUint32(b, uint32(len(p[0])))
		b = appendUint32(b, uint32(len(p[1])))
	}
	for _, p := range pairs {
		b = append(b, p[0]...)
		b = append(b, 0)
		b = append(b, p[1]...)
		b = append(b, 0)
	}
	return b
}

// DeserializeMap decodes the ABI's map layout. An empty input, or a single
// NUL byte, is the empty map. The strings share b's memory rather than
// copying it (a request's headers are read once per request, and copying
// each name and value was a large part of the filter's work), so b must
// never change afterwards: pass it memory the caller owns and drops, like
// a host allocation.
func DeserializeMap(b []byte) ([][2]string, error) { return DeserializeMapInto(nil, b) }

// DeserializeMapInto is DeserializeMap appending the pairs to dst, which
// saves allocating them when dst has the room.
func DeserializeMapInto(dst [][2]string, b []byte) ([][2]string, error) {
	if len(b) == 0 || (len(b) == 1 && b[0] == 0) {
		return dst, nil
	}
	if len(b) < 4 {
		return nil, wrapError(strconv.Itoa(len(b))+" bytes", ErrMalformedMap)
	}
	n := int(uint32At(b, 0))
	if n < 0 || n > (len(b)-4)/8 {
		return nil, wrapError(strconv.Itoa(n)+" pairs in "+strconv.Itoa(len(b))+" bytes", ErrMalformedMap)
	}
	sizes := b[4 : 4+8*n]
	data := b[4+8*n:]
	pairs := dst
	if cap(pairs)-len(pairs) < n {
		pairs = make([][2]string, len(dst), len(dst)+n)
		copy(pairs, dst)
	}
	for i := 0; i < n; i++ {
		kl := int(uint32At(sizes, 8*i))
		vl := int(uint32At(sizes, 8*i+4))
		if kl < 0 || vl < 0 || kl+vl+2 > len(data) || kl+vl+2 < 0 {
			return nil, wrapError("pair "+strconv.Itoa(i)+" overruns the buffer", ErrMalformedMap)
		}
		k := aliasString(data[:kl])
		v := aliasString(data[kl+1 : kl+1+vl])
		data = data[kl+1+vl+1:]
		pairs = append(pairs, [2]string{k, v})
	}
	return pairs, nil
}

// The map layout's integers are little-endian uint32s. They are read and
// written with shifts: encoding/binary would link reflect into the module.

func uint32At(b []byte, i int) uint32 {
	return uint32(b[i]) | uint32(b[i+1])<<8 | uint32(b[i+2])<<16 | uint32(b[i+3])<<24
}

func appendUint32(b []byte, v uint32) []byte {
	return append(b, byte(v), byte(v>>8), byte(v>>16), byte(v>>24))
}

// aliasString returns b as a string without copying it; b must not change
// afterwards.
func aliasString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}
