package abi

import "unsafe"

// The host returns data (header values, buffers) by calling
// proxy_on_memory_allocate during a host call and writing into the block it
// got. Go's heap does not move objects, so a []byte's address stays valid as
// long as the slice is reachable; allocations keeps every block reachable,
// keyed by its address, until the host call that caused it has returned and
// takeAllocation has handed the bytes to the caller.
var allocations = map[uint32][]byte{}

// allocate returns the address of a new zeroed block of size bytes that
// stays reachable until takeAllocation releases it. A VM runs one callback at
// a time, so the map needs no lock.
func allocate(size uint32) uint32 {
	if size == 0 {
		size = 1
	}
	b := make([]byte, size)
	addr := uint32(uintptr(unsafe.Pointer(&b[0])))
	allocations[addr] = b
	return addr
}

// takeAllocation returns the first size bytes of the block at addr and
// releases it. An unknown address (the host returned nothing) yields nil.
func takeAllocation(addr, size uint32) []byte {
	b, ok := allocations[addr]
	if !ok {
		return nil
	}
	delete(allocations, addr)
	if int(size) > len(b) {
		size = uint32(len(b))
	}
	return b[:size:size]
}

// pendingAllocations reports how many blocks the host has been given and not
// yet handed back; it should be zero between callbacks.
func pendingAllocations() int { return len(allocations) }
