package filter

// MaxRequestIDLen bounds a client's x-request-id. The id keys telemetry rows
// and feedback, travels in logs and headers, and is echoed to the client.
const MaxRequestIDLen = 128

// WellFormedRequestID reports whether a client's x-request-id may be kept:
// 1 to MaxRequestIDLen characters from [A-Za-z0-9._:-], which covers UUIDs,
// ULIDs and the usual prefixed ids and nothing that needs escaping in a
// header, a log line or a URL.
func WellFormedRequestID(id string) bool {
	if len(id) == 0 || len(id) > MaxRequestIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '.' || c == '_' || c == ':' || c == '-'
		if !ok {
			return false
		}
	}
	return true
}

// newRequestID returns a random UUID (version 4) drawn from random, the
// form Envoy generates itself.
func newRequestID(random func() uint64) string {
	hi, lo := random(), random()
	hi = hi&^(0xf<<12) | 0x4<<12 // version 4, in byte 6
	lo = lo&^(0x3<<62) | 0x2<<62 // variant 10, in byte 8
	var id [36]byte
	j := 0
	for i := 0; i < 32; i++ {
		if i == 8 || i == 12 || i == 16 || i == 20 {
			id[j] = '-'
			j++
		}
		w, shift := hi, 60-4*i
		if i >= 16 {
			w, shift = lo, 60-4*(i-16)
		}
		id[j] = hexDigits[w>>shift&0xf]
		j++
	}
	return string(id[:])
}
