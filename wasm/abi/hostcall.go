package abi

import (
	"strconv"
	"strings"
)

// LogTrace logs msg at trace level.
func LogTrace(msg string) { proxyLog(uint32(LogLevelTrace), msg) }

// LogDebug logs msg at debug level.
func LogDebug(msg string) { proxyLog(uint32(LogLevelDebug), msg) }

// LogInfo logs msg at info level.
func LogInfo(msg string) { proxyLog(uint32(LogLevelInfo), msg) }

// LogWarn logs msg at warning level.
func LogWarn(msg string) { proxyLog(uint32(LogLevelWarn), msg) }

// LogError logs msg at error level.
func LogError(msg string) { proxyLog(uint32(LogLevelError), msg) }

// LogCritical logs msg at critical level.
func LogCritical(msg string) { proxyLog(uint32(LogLevelCritical), msg) }

// GetVMConfiguration returns the VM configuration; valid in OnVMStart.
func GetVMConfiguration() ([]byte, error) {
	return getBuffer(BufferVMConfiguration, 0, maxBuffer)
}

// GetPluginConfiguration returns the plugin configuration; valid in
// OnPluginStart.
func GetPluginConfiguration() ([]byte, error) {
	return getBuffer(BufferPluginConfiguration, 0, maxBuffer)
}

// GetHttpRequestBody returns up to maxSize bytes of the buffered request
// body from start; valid in OnHttpRequestBody.
func GetHttpRequestBody(start, maxSize int) ([]byte, error) {
	return getBuffer(BufferHTTPRequestBody, start, maxSize)
}

// maxBuffer asks for a whole buffer; the host caps it at the buffer's size.
const maxBuffer = 1<<31 - 1

func getBuffer(bt BufferType, start, maxSize int) ([]byte, error) {
	var addr, size uint32
	st := proxyGetBufferBytes(uint32(bt), uint32(start), uint32(maxSize), &addr, &size)
	if err := StatusToError(st); err != nil {
		takeAllocation(addr, 0)
		return nil, wrapError("get buffer "+strconv.Itoa(int(bt)), err)
	}
	return takeAllocation(addr, size), nil
}

// GetHttpRequestBodyInto is GetHttpRequestBody that has the host write
// into *buf when it is large enough (else into a new block left in *buf):
// a caller that keeps buf across streams reads bodies without allocating.
// The result is *buf's memory, valid until buf is used again.
func GetHttpRequestBodyInto(buf *[]byte, start, maxSize int) ([]byte, error) {
	var b []byte
	var err error
	lend(buf, func() { b, err = getBuffer(BufferHTTPRequestBody, start, maxSize) })
	return b, err
}

// GetHttpRequestHeader returns a request header's value, or ErrNotFound.
func GetHttpRequestHeader(key string) (string, error) {
	return getMapValue(MapHTTPRequestHeaders, key)
}

// GetHttpRequestHeaders returns all request headers, pseudo-headers
// (":path", ":method", …) included, in the host's order.
func GetHttpRequestHeaders() ([][2]string, error) {
	return getMapPairs(MapHTTPRequestHeaders, nil)
}

// GetHttpRequestHeadersInto is GetHttpRequestHeaders that reuses the
// caller's memory: the host writes the map into *buf when it is large
// enough (else into a new block left in *buf), and the pairs are appended to
// pairs[:0]. The strings alias *buf, so they are valid until buf is used
// again.
func GetHttpRequestHeadersInto(buf *[]byte, pairs [][2]string) ([][2]string, error) {
	var got [][2]string
	var err error
	lend(buf, func() { got, err = getMapPairs(MapHTTPRequestHeaders, pairs[:0]) })
	return got, err
}

// ReplaceHttpRequestHeader sets a request header, replacing any values.
// In Envoy (ABI ≤ 0.2.1) every request-header edit clears the route cache,
// so the route is picked again with the edited headers.
func ReplaceHttpRequestHeader(key, value string) error {
	return wrap("replace request header", proxyReplaceHeaderMapValue(uint32(MapHTTPRequestHeaders), key, value))
}

// AddHttpRequestHeader appends a request header value.
func AddHttpRequestHeader(key, value string) error {
	return wrap("add request header", proxyAddHeaderMapValue(uint32(MapHTTPRequestHeaders), key, value))
}

// RemoveHttpRequestHeader removes every value of a request header; removing
// an absent header succeeds.
func RemoveHttpRequestHeader(key string) error {
	return wrap("remove request header", proxyRemoveHeaderMapValue(uint32(MapHTTPRequestHeaders), key))
}

// GetHttpResponseHeader returns a response header's value, or ErrNotFound.
func GetHttpResponseHeader(key string) (string, error) {
	return getMapValue(MapHTTPResponseHeaders, key)
}

// ReplaceHttpResponseHeader sets a response header.
func ReplaceHttpResponseHeader(key, value string) error {
	return wrap("replace response header", proxyReplaceHeaderMapValue(uint32(MapHTTPResponseHeaders), key, value))
}

// AddHttpResponseHeader appends a response header value.
func AddHttpResponseHeader(key, value string) error {
	return wrap("add response header", proxyAddHeaderMapValue(uint32(MapHTTPResponseHeaders), key, value))
}

// RemoveHttpResponseHeader removes every value of a response header.
func RemoveHttpResponseHeader(key string) error {
	return wrap("remove response header", proxyRemoveHeaderMapValue(uint32(MapHTTPResponseHeaders), key))
}

// ResumeHttpRequest continues a request paused by ActionPause.
func ResumeHttpRequest() error {
	return wrap("resume request", proxyContinueStream(uint32(StreamHTTPRequest)))
}

// SendHttpResponse answers the stream locally instead of forwarding it.
// gRPCStatus -1 means "not a gRPC response". Callbacks should return
// ActionPause after it.
func SendHttpResponse(statusCode uint32, headers [][2]string, body []byte, gRPCStatus int32) error {
	return SendHttpResponseWithDetails(statusCode, "", headers, body, gRPCStatus)
}

// SendHttpResponseWithDetails is SendHttpResponse that names the reply in
// Envoy's response code details (%RESPONSE_CODE_DETAILS%; no whitespace).
func SendHttpResponseWithDetails(statusCode uint32, details string, headers [][2]string, body []byte, gRPCStatus int32) error {
	hs := SerializeMap(headers)
	var bodyPtr, hsPtr *byte
	if len(body) > 0 {
		bodyPtr = &body[0]
	}
	if len(hs) > 0 {
		hsPtr = &hs[0]
	}
	st := proxySendLocalResponse(statusCode, details, bodyPtr, uint32(len(body)), hsPtr, uint32(len(hs)), gRPCStatus)
	return wrap("send local response", st)
}

func getMapValue(mt MapType, key string) (string, error) {
	var addr, size uint32
	st := proxyGetHeaderMapValue(uint32(mt), key, &addr, &size)
	if err := StatusToError(st); err != nil {
		takeAllocation(addr, 0)
		return "", wrapError("get header "+strconv.Quote(key), err)
	}
	return aliasString(takeAllocation(addr, size)), nil
}

// getMapPairs reads a header map, appending its pairs to dst.
func getMapPairs(mt MapType, dst [][2]string) ([][2]string, error) {
	var addr, size uint32
	st := proxyGetHeaderMapPairs(uint32(mt), &addr, &size)
	if err := StatusToError(st); err != nil {
		takeAllocation(addr, 0)
		return nil, wrapError("get header map "+strconv.Itoa(int(mt)), err)
	}
	return DeserializeMapInto(dst, takeAllocation(addr, size))
}

func wrap(op string, st Status) error {
	if err := StatusToError(st); err != nil {
		return wrapError(op, err)
	}
	return nil
}

// HeaderValue returns the value of the first header named key (compared
// case-insensitively) in pairs.
func HeaderValue(pairs [][2]string, key string) (string, bool) {
	for _, p := range pairs {
		if strings.EqualFold(p[0], key) {
			return p[1], true
		}
	}
	return "", false
}
