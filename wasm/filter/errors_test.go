package filter

import (
	"encoding/json"
	"testing"
)

// encodingJSONBody is what APIError.Body wrote when it used encoding/json.
func encodingJSONBody(e APIError) []byte {
	type inner struct {
		Message string `json:"message"`
		Type    string `json:"type"`
		Code    string `json:"code"`
	}
	b, _ := json.Marshal(struct {
		Error inner `json:"error"`
	}{inner{e.Message, "invalid_request_error", e.Code}})
	return b
}

func TestAPIErrorBodyIsWhatEncodingJSONWrites(t *testing.T) {
	for _, msg := range []string{
		"plain",
		"The model `gpt-4` does not exist",
		"quotes \" and backslash \\ and slash /",
		"controls \b\f\n\r\t\x00\x1f\x7f",
		"html <script>&amp;</script>",
		"line separators \u2028 \u2029",
		"unicode é 中文 😀",
		"invalid utf-8 \xff\xfe and a cut rune \xe4\xb8",
	} {
		e := APIError{Status: 404, Message: msg, Code: "model_not_found"}
		if got, want := string(e.Body()), string(encodingJSONBody(e)); got != want {
			t.Errorf("Body() = %s, encoding/json wrote %s", got, want)
		}
	}
}

func FuzzAPIErrorBody(f *testing.F) {
	f.Add("The model `m` does not exist")
	f.Fuzz(func(t *testing.T, msg string) {
		e := APIError{Message: msg, Code: "c"}
		if got, want := string(e.Body()), string(encodingJSONBody(e)); got != want {
			t.Fatalf("Body() = %q, encoding/json wrote %q", got, want)
		}
	})
}
