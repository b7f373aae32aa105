package filterconfig

import (
	"strings"
	"testing"

	"github.com/llmcanary/llmcanary/internal/wire"
)

const key16 = "0123456789abcdef"

func TestParseAppliesDefaults(t *testing.T) {
	c, err := Parse([]byte(`{"hash_key":"` + key16 + `","models":["m1"]}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Identity) != 2 || c.Identity[0].Header != wire.HeaderUserID || c.Identity[1].BodyField != "user" {
		t.Errorf("identity %+v, want the %s header, then the body's user", c.Identity, wire.HeaderUserID)
	}
	if c.MaxBodyBytes != DefaultMaxBodyBytes || c.CategoryHeader != wire.HeaderCategory {
		t.Errorf("defaults not applied: %+v", c)
	}
}

func TestParseRejects(t *testing.T) {
	cases := []struct {
		name, json, want string
	}{
		{"unknown field", `{"hash_key":"` + key16 + `","modles":["m1"]}`, "unknown field"},
		{"not JSON", `hash_key: x`, "parse filter config"},
		{"short hash key", `{"hash_key":"short"}`, "hash_key"},
		{"two fields in one source", `{"hash_key":"` + key16 + `","identity":[{"header":"a","cookie":"b"}]}`, "identity[0]"},
		{"empty source", `{"hash_key":"` + key16 + `","identity":[{}]}`, "identity[0]"},
		{"force key in clear", `{"hash_key":"` + key16 + `","force_keys":["secret"]}`, "force_keys[0]"},
		{"negative body cap", `{"hash_key":"` + key16 + `","max_body_bytes":-1}`, "max_body_bytes"},
		{"duplicate model", `{"hash_key":"` + key16 + `","models":["m","m"]}`, "duplicate"},
		{"empty model", `{"hash_key":"` + key16 + `","models":[""]}`, "models[0]"},
		{"trailing data", `{"hash_key":"` + key16 + `"} {}`, "trailing"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.json))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Parse error %v, want one mentioning %q", err, c.want)
			}
		})
	}
}

func TestValidateJoinsErrors(t *testing.T) {
	err := Config{HashKey: "x", Models: []string{""}, MaxBodyBytes: -1}.Validate()
	for _, want := range []string{"hash_key", "models[0]", "max_body_bytes"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate error %v, want it to mention %s", err, want)
		}
	}
}
