//go:build !wasip1

package abi

// Native stand-ins for the host functions: every call reports
// StatusUnimplemented, so code using the package builds, vets and
// unit-tests natively while only the wasip1 build talks to a host.

func proxyLog(uint32, string) Status { return StatusUnimplemented }

func proxyGetBufferBytes(uint32, uint32, uint32, *uint32, *uint32) Status {
	return StatusUnimplemented
}

func proxyGetHeaderMapValue(uint32, string, *uint32, *uint32) Status { return StatusUnimplemented }

func proxyGetHeaderMapPairs(uint32, *uint32, *uint32) Status { return StatusUnimplemented }

func proxyReplaceHeaderMapValue(uint32, string, string) Status { return StatusUnimplemented }

func proxyAddHeaderMapValue(uint32, string, string) Status { return StatusUnimplemented }

func proxyRemoveHeaderMapValue(uint32, string) Status { return StatusUnimplemented }

func proxyContinueStream(uint32) Status { return StatusUnimplemented }

func proxySendLocalResponse(uint32, string, *byte, uint32, *byte, uint32, int32) Status {
	return StatusUnimplemented
}
