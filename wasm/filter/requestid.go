package filter

import (
	"encoding/binary"
	"encoding/hex"
)

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
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], random())
	binary.BigEndian.PutUint64(b[8:], random())
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
