//go:build wasip1

package abi

// Exports of proxy-wasm ABI 0.2.1. Booleans cross the boundary as i32.
// Only the request's callbacks are exported: Envoy skips a callback the
// module does not export, so responses, and stream ends but for
// proxy_on_delete, never enter the VM (see HttpContext).

//go:wasmexport proxy_abi_version_0_2_1
func proxyABIVersion021() {}

//go:wasmexport proxy_on_memory_allocate
func proxyOnMemoryAllocate(size uint32) uint32 { return allocate(size) }

//go:wasmexport proxy_on_vm_start
func proxyOnVMStart(rootID, size uint32) uint32 { return b2u(onVMStart(rootID, size)) }

//go:wasmexport proxy_on_context_create
func proxyOnContextCreate(id, parentID uint32) { onContextCreate(id, parentID) }

//go:wasmexport proxy_on_configure
func proxyOnConfigure(rootID, size uint32) uint32 { return b2u(onConfigure(rootID, size)) }

//go:wasmexport proxy_on_request_headers
func proxyOnRequestHeaders(id, n, eos uint32) uint32 {
	return uint32(onRequestHeaders(id, n, eos != 0))
}

//go:wasmexport proxy_on_request_body
func proxyOnRequestBody(id, size, eos uint32) uint32 {
	return uint32(onRequestBody(id, size, eos != 0))
}

//go:wasmexport proxy_on_request_trailers
func proxyOnRequestTrailers(id, n uint32) uint32 { return uint32(onRequestTrailers(id, n)) }

//go:wasmexport proxy_on_delete
func proxyOnDelete(id uint32) { onDelete(id) }

func b2u(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}
