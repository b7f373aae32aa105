package abi

import "unsafe"

// The host returns data (header values, buffers) by calling
// proxy_on_memory_allocate during a host call and writing into the block it
// got. Go's heap does not move objects, so a []byte's address stays valid as
// long as the slice is reachable; allocations keeps every block reachable
// until the host call that caused it has returned and takeAllocation has
// handed the bytes to the caller. A host call allocates at most one block,
// so the list is short and searched linearly (cheaper in the VM than a
// map's hashing).
var allocations [][]byte

// allocate returns the address of a new zeroed block of size bytes that
// stays reachable until takeAllocation releases it. A VM runs one callback at
// a time, so the list needs no lock.
func allocate(size uint32) uint32 {
	if size == 0 {
		size = 1
	}
	b := make([]byte, size)
	allocations = append(allocations, b)
	return addrOf(b)
}

func addrOf(b []byte) uint32 { return uint32(uintptr(unsafe.Pointer(&b[0]))) }

// takeAllocation returns the first size bytes of the block at addr and
// releases it. An unknown address (the host returned nothing) yields nil.
func takeAllocation(addr, size uint32) []byte {
	for i, b := range allocations {
		if addrOf(b) != addr {
			continue
		}
		last := len(allocations) - 1
		allocations[i] = allocations[last]
		allocations[last] = nil
		allocations = allocations[:last]
		if int(size) > len(b) {
			size = uint32(len(b))
		}
		return b[:size:size]
	}
	return nil
}

// pendingAllocations reports how many blocks the host has been given and not
// yet handed back; it should be zero between callbacks.
func pendingAllocations() int { return len(allocations) }
