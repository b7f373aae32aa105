//go:build !wasip1

package filterconfig

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// decodeWithEncodingJSON is how the configuration was decoded before the
// module dropped encoding/json: the reference for decodeStrict.
func decodeWithEncodingJSON(data []byte) (Config, error) {
	var c Config
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	err := dec.Decode(&c)
	if err == nil && dec.More() {
		err = errNotOneObject
	}
	return c, err
}

var errNotOneObject = errors.New("trailing data after the JSON object")

// fullConfig sets every field of Config and Source, so a field added
// without a decoder fails TestDecodeRoundTripsEveryField.
func fullConfig() Config {
	return Config{
		Identity:              []Source{{Header: "x-user-id"}, {Cookie: "sid"}, {BodyField: "user"}},
		HashKey:               "a \"quoted\" key\u00e9\u2028",
		ForceKeys:             []string{ForceKeyDigest("k1"), ForceKeyDigest("k2")},
		MaxBodyBytes:          12345,
		Models:                []string{"m1", "m2"},
		CategoryHeader:        "x-task",
		CategoryHeaderTrusted: true,
		Cohorts: []ModelCohorts{{Model: "m1",
			OptIn:    Members{Identities: []string{"alice"}, Cohorts: []string{"internal"}, Tenants: []string{"acme"}},
			Excluded: Members{Identities: []string{"bob"}, Cohorts: []string{"press"}, Tenants: []string{"bank"}}}},
		CohortHeader:        "x-cohort",
		CohortHeaderTrusted: true,
		TenantHeader:        "x-tenant",
	}
}

func TestDecodeRoundTripsEveryField(t *testing.T) {
	want := fullConfig()
	for _, v := range []any{want, want.Identity[0], want.Identity[1], want.Identity[2]} {
		rv := reflect.ValueOf(v)
		n := 0
		for i := 0; i < rv.NumField(); i++ {
			if !rv.Field(i).IsZero() {
				n++
			}
		}
		if _, isSource := v.(Source); (isSource && n != 1) || (!isSource && n != rv.NumField()) {
			t.Fatalf("fullConfig leaves fields of %T unset: %+v", v, v)
		}
	}
	js, err := want.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var got Config
	if err := decodeStrict(js, &got); err != nil {
		t.Fatalf("decode %s: %v", js, err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("decoded %+v\nwant    %+v", got, want)
	}
}

func TestDecodeAgreesWithEncodingJSON(t *testing.T) {
	inputs := []string{
		`{}`,
		`null`,
		` {"hash_key":"` + key16 + `"} ` + "\n",
		`{"hash_key":null,"models":null,"identity":null,"max_body_bytes":null,"category_header_trusted":null}`,
		`{"models":[],"identity":[],"force_keys":[]}`,
		`{"identity":[{"header":"a"},{"cookie":"c","header":null},{"body_field":"\u0075ser"}]}`,
		`{"hash_key":"esc\"aped\\\/\n\u00e9\ud83d\ude00","models":["a","b\tc"]}`,
		`{"max_body_bytes":0,"category_header_trusted":false}`,
		`{"max_body_bytes":-5,"category_header_trusted":true}`,
		`{"identity":[{}]}`,
	}
	for _, in := range inputs {
		want, werr := decodeWithEncodingJSON([]byte(in))
		var got Config
		gerr := decodeStrict([]byte(in), &got)
		if werr != nil || gerr != nil {
			t.Errorf("%s: errors %v (decodeStrict) and %v (encoding/json), want none", in, gerr, werr)
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\ndecodeStrict  %+v\nencoding/json %+v", in, got, want)
		}
	}
}

func TestDecodeRejectsWithTheFieldAndTheProblem(t *testing.T) {
	cases := []struct {
		name, json, want string
		jsonAccepts      bool // encoding/json took it; decodeStrict is stricter
	}{
		{"unknown field", `{"modles":["m1"]}`, `unknown field "modles"`, false},
		{"unknown field in a source", `{"identity":[{"headr":"x"}]}`, `identity[0]: unknown field "headr"`, false},
		{"string where an array belongs", `{"models":"m1"}`, "models: want an array of strings, got string", false},
		{"number in the models", `{"models":["m1",2]}`, "models[1]: want a string, got number", false},
		{"number as the hash key", `{"hash_key":1234}`, "hash_key: want a string, got number", false},
		{"fraction as the body cap", `{"max_body_bytes":1.5}`, "max_body_bytes: want an integer, got 1.5", false},
		{"exponent as the body cap", `{"max_body_bytes":1e3}`, "max_body_bytes: want an integer, got 1e3", false},
		{"body cap beyond int64", `{"max_body_bytes":99999999999999999999}`, "max_body_bytes: want an integer", false},
		{"string as the body cap", `{"max_body_bytes":"10"}`, "max_body_bytes: want an integer, got string", false},
		{"string as a flag", `{"category_header_trusted":"yes"}`, "category_header_trusted: want true or false, got string", false},
		{"source not an object", `{"identity":["x-user-id"]}`, "identity[0]: want an object, got string", false},
		{"identity not an array", `{"identity":{"header":"a"}}`, "identity: want an array, got object", false},
		{"not an object", `["hash_key"]`, "filter config: want an object, got array", false},
		{"trailing data", `{} {}`, "trailing data", false},
		{"not JSON", `hash_key: x`, "not valid JSON", false},
		{"cut short", `{"hash_key":"abc`, "not valid JSON", false},
		{"null in the models", `{"models":["m1",null]}`, "models[1]: want a string, got null", true},
		{"key in another case", `{"Hash_Key":"` + key16 + `"}`, `unknown field "Hash_Key"`, true},
		{"key given twice", `{"hash_key":"a","hash_key":"b"}`, "hash_key: given twice", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got Config
			err := decodeStrict([]byte(c.json), &got)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("decodeStrict error %v, want one mentioning %q", err, c.want)
			}
			if _, jerr := decodeWithEncodingJSON([]byte(c.json)); (jerr == nil) != c.jsonAccepts {
				t.Errorf("encoding/json error %v; the case says it accepts: %v", jerr, c.jsonAccepts)
			}
		})
	}
}

func TestParseDigest(t *testing.T) {
	d := ForceKeyDigest("k")
	got, ok := ParseDigest(d)
	if !ok {
		t.Fatalf("ParseDigest(%s) failed", d)
	}
	if upper, ok := ParseDigest(strings.ToUpper(d)); !ok || upper != got {
		t.Error("upper-case hex not read as the same digest")
	}
	for _, bad := range []string{"", d[:62], d + "00", d[:63] + "g", "secret"} {
		if _, ok := ParseDigest(bad); ok {
			t.Errorf("ParseDigest(%q) accepted", bad)
		}
	}
}

func FuzzDecodeAgreesWithEncodingJSON(f *testing.F) {
	js, _ := fullConfig().Marshal()
	f.Add(js)
	f.Add([]byte(`{"identity":[{"header":"a"}],"max_body_bytes":10}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var got Config
		err := decodeStrict(data, &got)
		if err != nil {
			return // stricter is allowed; what it accepts must agree
		}
		want, jerr := decodeWithEncodingJSON(data)
		if jerr != nil {
			t.Fatalf("decodeStrict accepted %q, encoding/json: %v", data, jerr)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q:\ndecodeStrict  %+v\nencoding/json %+v", data, got, want)
		}
	})
}
