//go:build wasip1

package abi

// Host functions of proxy-wasm ABI 0.2.1 (module "env"). Pointers the host
// writes through (return_*) point at Go variables; data the host returns is
// allocated through proxy_on_memory_allocate (see memory.go).

//go:wasmimport env proxy_log
func proxyLog(level uint32, msg string) Status

//go:wasmimport env proxy_get_buffer_bytes
func proxyGetBufferBytes(bt uint32, start, maxSize uint32, retData *uint32, retSize *uint32) Status

//go:wasmimport env proxy_get_header_map_value
func proxyGetHeaderMapValue(mt uint32, key string, retData *uint32, retSize *uint32) Status

//go:wasmimport env proxy_get_header_map_pairs
func proxyGetHeaderMapPairs(mt uint32, retData *uint32, retSize *uint32) Status

//go:wasmimport env proxy_replace_header_map_value
func proxyReplaceHeaderMapValue(mt uint32, key string, value string) Status

//go:wasmimport env proxy_add_header_map_value
func proxyAddHeaderMapValue(mt uint32, key string, value string) Status

//go:wasmimport env proxy_remove_header_map_value
func proxyRemoveHeaderMapValue(mt uint32, key string) Status

//go:wasmimport env proxy_continue_stream
func proxyContinueStream(st uint32) Status

//go:wasmimport env proxy_send_local_response
func proxySendLocalResponse(statusCode uint32, details string, body *byte, bodySize uint32, headers *byte, headersSize uint32, grpcStatus int32) Status
