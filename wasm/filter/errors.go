package filter

import "unicode/utf8"

// APIError is an OpenAI-style error response.
type APIError struct {
	Status  int
	Message string
	Code    string
}

// The filter's local responses.
func errTooLarge() APIError {
	return APIError{Status: 413, Message: "request body is larger than the gateway accepts", Code: "request_too_large"}
}

func errBadBody(err error) APIError {
	return APIError{Status: 400, Message: err.Error(), Code: "invalid_request_body"}
}

func errInternal() APIError {
	return APIError{Status: 500, Message: "gateway filter error", Code: "internal_error"}
}

func errUnknownModel(model string) APIError {
	return APIError{Status: 404, Message: "The model `" + model + "` does not exist", Code: "model_not_found"}
}

// Body returns the JSON body {"error":{"message","type","code"}}, byte for
// byte what encoding/json writes for it (which the module no longer links).
func (e APIError) Body() []byte {
	b := append(make([]byte, 0, 64+len(e.Message)), `{"error":{"message":`...)
	b = appendJSONString(b, e.Message)
	b = append(b, `,"type":"invalid_request_error","code":`...)
	b = appendJSONString(b, e.Code)
	return append(b, "}}"...)
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string the way encoding/json does:
// '"' and '\\' escaped, \b \f \n \r \t by name, other control characters
// and the HTML-sensitive '<', '>', '&' as \u00XX, U+2028 and U+2029 as
// \u2028 and \u2029, and invalid UTF-8 as \ufffd.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
