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

// lent is memory a caller lends to the next host call (see lend): the
// block allocate hands the host when it is large enough, so that reading a
// stream's headers or body allocates nothing once the stream's context is
// reused. nil: allocate makes a new block.
var lent *[]byte

// lend makes allocate, during f (one host call), write into *buf when its
// capacity suffices, and otherwise make a new block and leave it in *buf
// for the next time. What the host writes is then only valid until *buf is
// lent again.
func lend(buf *[]byte, f func()) {
	lent = buf
	f()
	lent = nil
}

// allocate returns the address of a block of size bytes that stays
// reachable until takeAllocation releases it: a new zeroed block, or the
// lent one (see lend), which the host overwrites. A VM runs one callback
// at a time, so the list needs no lock.
func allocate(size uint32) uint32 {
	if size == 0 {
		size = 1
	}
	var b []byte
	switch {
	case lent != nil && uint32(cap(*lent)) >= size:
		b = (*lent)[:size]
	case lent != nil:
		b = make([]byte, size)
		*lent = b
	default:
		b = make([]byte, size)
	}
	lent = nil // one block per host call
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
