package jsonscan

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// decodeMembers is what encoding/json sees in data: its top-level members
// (the last of duplicate keys) with their raw values, or ok=false.
func decodeMembers(data []byte) (map[string]string, bool) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil || m == nil {
		return nil, false
	}
	out := map[string]string{}
	for k, v := range m {
		out[k] = string(v)
	}
	return out, true
}

// scanMembers is the same through Members, keeping the last duplicate.
func scanMembers(data []byte) (map[string]string, bool) {
	return membersBy(Members, data)
}

// singlePassMembers is the same through ScanMembers.
func singlePassMembers(data []byte) (map[string]string, bool) {
	return membersBy(ScanMembers, data)
}

func membersBy(scan func([]byte, func([]byte, Value)) error, data []byte) (map[string]string, bool) {
	out := map[string]string{}
	err := scan(data, func(k []byte, v Value) { out[string(k)] = string(v.Raw) })
	return out, err == nil
}

func TestMembersAgreesWithEncodingJSON(t *testing.T) {
	cases := []struct{ name, doc string }{
		{"empty object", `{}`},
		{"whitespace everywhere", " \t\r\n{ \"a\" : 1 , \"b\"\n:\t[ 1 , 2 ] }\n "},
		{"nesting", `{"a":{"model":"inner"},"b":[{"model":"x"}],"model":"outer"}`},
		{"duplicate keys, the last wins", `{"model":"a","model":"b"}`},
		{"escaped key", `{"mod\u0065l":"m","\"q\"":1}`},
		{"escapes in values", `{"s":"a\"b\\c\/d\b\f\n\r\t\u00e9\ud83d\ude00"}`},
		{"numbers", `{"a":0,"b":-0.5,"c":1e10,"d":1E-2,"e":-12.75e+3}`},
		{"literals", `{"a":true,"b":false,"c":null}`},
		{"raw non-ASCII and invalid UTF-8", "{\"a\":\"é\xff\"}"},
		{"not an object", `[1]`},
		{"null document", `null`},
		{"string document", `"x"`},
		{"empty", ``},
		{"only space", `   `},
		{"truncated", `{"a":`},
		{"unterminated string", `{"a":"x}`},
		{"trailing comma", `{"a":1,}`},
		{"missing colon", `{"a" 1}`},
		{"unquoted key", `{a:1}`},
		{"leading zero", `{"a":01}`},
		{"bare minus", `{"a":-}`},
		{"dot without digits", `{"a":1.}`},
		{"exponent without digits", `{"a":1e}`},
		{"bad literal", `{"a":nul}`},
		{"bad escape", `{"a":"\x"}`},
		{"short unicode escape", `{"a":"\u12"}`},
		{"raw control character", "{\"a\":\"x\ny\"}"},
		{"trailing garbage", `{"a":1} x`},
		{"two documents", `{"a":1}{"b":2}`},
		{"unclosed array", `{"a":[1,2}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			want, wantOK := decodeMembers([]byte(c.doc))
			for name, scan := range map[string]func([]byte) (map[string]string, bool){"Members": scanMembers, "ScanMembers": singlePassMembers} {
				got, ok := scan([]byte(c.doc))
				if ok != wantOK {
					t.Fatalf("%s: valid = %v, encoding/json says %v", name, ok, wantOK)
				}
				if ok && !sameMembers(got, want) {
					t.Fatalf("%s: members %q, encoding/json %q", name, got, want)
				}
			}
		})
	}
}

func sameMembers(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestNestingBeyondEncodingJSONsLimitIsInvalid(t *testing.T) {
	deep := `{"a":` + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + `}`
	if _, ok := scanMembers([]byte(deep)); ok {
		t.Fatal("20000 levels accepted")
	}
	ok := `{"a":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`
	if _, valid := scanMembers([]byte(ok)); !valid {
		t.Fatal("100 levels rejected")
	}
}

func TestUnquoteDecodesAsEncodingJSON(t *testing.T) {
	for _, raw := range []string{
		`""`, `"plain"`, `"a\"b\\c\/d"`, `"\b\f\n\r\t"`, `"\u00e9\u4e2d"`,
		`"\ud83d\ude00"`, `"lone \ud83d high"`, `"lone \ude00 low"`, `"\ud83d\u0041"`,
		"\"raw é 中\"", "\"invalid \xff\xfe\"", "\"cut rune \xe4\xb8\"",
	} {
		var want string
		if err := json.Unmarshal([]byte(raw), &want); err != nil {
			t.Fatalf("encoding/json rejects %q: %v", raw, err)
		}
		got, ok := Unquote([]byte(raw))
		if !ok || got != want {
			t.Errorf("Unquote(%q) = %q, %v; encoding/json %q", raw, got, ok, want)
		}
	}
	for _, bad := range []string{``, `"`, `x`, `"a`, `"\q"`, "\"a\nb\""} {
		if _, ok := Unquote([]byte(bad)); ok {
			t.Errorf("Unquote(%q) accepted", bad)
		}
	}
}

func TestElementsListsAnArray(t *testing.T) {
	var got []string
	if err := Elements([]byte(` [ "a", 1 , {"b":[2]} ] `), func(v Value) { got = append(got, string(v.Raw)) }); err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, "|") != `"a"|1|{"b":[2]}` {
		t.Fatalf("elements %q", got)
	}
	if err := Elements([]byte(`{}`), func(Value) {}); err == nil {
		t.Fatal("an object accepted as an array")
	}
	got = got[:0]
	if err := ScanElements([]byte(` [ "a", 1 , {"b":[2]} ] `), func(v Value) { got = append(got, string(v.Raw)) }); err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, "|") != `"a"|1|{"b":[2]}` {
		t.Fatalf("ScanElements: elements %q", got)
	}
	for _, bad := range []string{`{}`, `[1,]`, `[1 2]`, `[1] x`, `[`, `[]]`} {
		if err := ScanElements([]byte(bad), func(Value) {}); err == nil {
			t.Errorf("ScanElements accepted %q", bad)
		}
	}
	if err := ScanElements([]byte(" [ ] "), func(Value) { t.Fatal("an element in an empty array") }); err != nil {
		t.Fatal(err)
	}
}

func FuzzMembersAgreesWithEncodingJSON(f *testing.F) {
	for _, s := range []string{`{"model":"m1","user":"u"}`, `{"a":[1,{"b":null}],"a":"\u00e9"}`, `{}`, `[1]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		want, wantOK := decodeMembers(data)
		got, ok := scanMembers(data)
		if ok != wantOK {
			t.Fatalf("valid = %v, encoding/json %v for %q", ok, wantOK, data)
		}
		if ok && !sameMembers(got, want) {
			t.Fatalf("members %q, encoding/json %q", got, want)
		}
		if one, oneOK := singlePassMembers(data); oneOK != ok || ok && !sameMembers(one, got) {
			t.Fatalf("ScanMembers %q (valid %v), Members %q (valid %v) for %q", one, oneOK, got, ok, data)
		}
		for _, v := range got {
			if len(v) > 0 && v[0] == '"' {
				var s string
				json.Unmarshal([]byte(v), &s)
				if u, _ := Unquote([]byte(v)); !bytes.Equal([]byte(u), []byte(s)) {
					t.Fatalf("Unquote(%q) = %q, encoding/json %q", v, u, s)
				}
			}
		}
	})
}

func TestNextSplitsTheFirstValueFromWhatFollows(t *testing.T) {
	cases := []struct {
		name, in  string
		kind      Kind
		raw, rest string
		err       bool
	}{
		{"object then another", ` {"a":1} {}`, Object, `{"a":1}`, ` {}`, false},
		{"lone string", `"x"`, String, `"x"`, ``, false},
		{"number stops at a space", `12 3`, Number, `12`, ` 3`, false},
		{"literal", "null\n", Null, `null`, "\n", false},
		{"broken object", `{"a":}`, Invalid, ``, ``, true},
		{"empty", `  `, Invalid, ``, ``, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v, rest, err := Next([]byte(c.in))
			if (err != nil) != c.err || v.Kind != c.kind || string(v.Raw) != c.raw || string(rest) != c.rest {
				t.Fatalf("Next(%q) = %v %q, rest %q, err %v; want %v %q, rest %q, err %v",
					c.in, v.Kind, v.Raw, rest, err, c.kind, c.raw, c.rest, c.err)
			}
		})
	}
	if !OnlySpace([]byte(" \t\r\n")) || OnlySpace([]byte(" x")) {
		t.Error("OnlySpace misjudges whitespace")
	}
	if Object.String() != "object" || Bool.String() != "boolean" || Invalid.String() != "invalid" {
		t.Error("kind names are not JSON's")
	}
}
