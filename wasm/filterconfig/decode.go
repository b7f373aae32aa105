package filterconfig

import (
	"errors"
	"strconv"

	"github.com/llmcanary/llmcanary/internal/jsonscan"
)

// decodeStrict decodes data, exactly one JSON object, into c. It does what
// encoding/json's Decoder with DisallowUnknownFields did for this one
// type, over jsonscan, so that the wasm module links neither encoding/json
// nor reflect (V8 compiles every function of the module before Envoy
// serves, so each linked package delays every start). It is stricter in
// two ways: keys match the field names exactly (encoding/json also took
// "Hash_Key"), and a key given twice is an error rather than the last one
// winning. A null value leaves its field unset, as with encoding/json.
func decodeStrict(data []byte, c *Config) error {
	v, rest, err := jsonscan.Next(data)
	if err != nil {
		return errors.New("not valid JSON")
	}
	if !jsonscan.OnlySpace(rest) {
		return errors.New("trailing data after the JSON object")
	}
	if v.Kind == jsonscan.Null {
		return nil
	}
	return decodeObject(v, "", []field{
		{"identity", func(p string, v jsonscan.Value) error { return decodeSources(p, v, &c.Identity) }},
		{"hash_key", stringInto(&c.HashKey)},
		{"force_keys", stringsInto(&c.ForceKeys)},
		{"max_body_bytes", intInto(&c.MaxBodyBytes)},
		{"models", stringsInto(&c.Models)},
		{"category_header", stringInto(&c.CategoryHeader)},
		{"category_header_trusted", boolInto(&c.CategoryHeaderTrusted)},
		{"cohorts", func(p string, v jsonscan.Value) error { return decodeCohorts(p, v, &c.Cohorts) }},
		{"cohort_header", stringInto(&c.CohortHeader)},
		{"cohort_header_trusted", boolInto(&c.CohortHeaderTrusted)},
		{"tenant_header", stringInto(&c.TenantHeader)},
	})
}

func decodeSources(path string, v jsonscan.Value, dst *[]Source) error {
	return decodeObjects(path, v, dst, func(p string, e jsonscan.Value, s *Source) error {
		if e.Kind != jsonscan.Object {
			return typeError(p, "an object", e)
		}
		return decodeObject(e, p, []field{
			{"header", stringInto(&s.Header)},
			{"cookie", stringInto(&s.Cookie)},
			{"body_field", stringInto(&s.BodyField)},
		})
	})
}

func decodeCohorts(path string, v jsonscan.Value, dst *[]ModelCohorts) error {
	return decodeObjects(path, v, dst, func(p string, e jsonscan.Value, mc *ModelCohorts) error {
		return decodeObject(e, p, []field{
			{"model", stringInto(&mc.Model)},
			{"opt_in", membersInto(&mc.OptIn)},
			{"excluded", membersInto(&mc.Excluded)},
		})
	})
}

// decodeObjects decodes the array v into dst, each element by elem with
// its path.
func decodeObjects[T any](path string, v jsonscan.Value, dst *[]T, elem func(p string, e jsonscan.Value, x *T) error) error {
	if v.Kind != jsonscan.Array {
		return typeError(path, "an array", v)
	}
	out := []T{}
	var err error
	jsonscan.Elements(v.Raw, func(e jsonscan.Value) {
		if err != nil {
			return
		}
		var x T
		err = elem(path+"["+strconv.Itoa(len(out))+"]", e, &x)
		out = append(out, x)
	})
	if err != nil {
		return err
	}
	*dst = out
	return nil
}

func membersInto(m *Members) func(string, jsonscan.Value) error {
	return func(path string, v jsonscan.Value) error {
		return decodeObject(v, path, []field{
			{"identities", stringsInto(&m.Identities)},
			{"cohorts", stringsInto(&m.Cohorts)},
			{"tenants", stringsInto(&m.Tenants)},
		})
	}
}

// field is one member an object may have: its JSON name and how its value
// is stored. set is called with the member's path and its non-null value.
type field struct {
	name string
	set  func(path string, v jsonscan.Value) error
}

// decodeObject stores the members of the object v through fields; a
// member no field names is an error, and so is a member given twice.
func decodeObject(v jsonscan.Value, path string, fields []field) error {
	if v.Kind != jsonscan.Object {
		return typeError(path, "an object", v)
	}
	seen := make([]bool, len(fields))
	var err error
	jsonscan.Members(v.Raw, func(key []byte, mv jsonscan.Value) {
		if err != nil {
			return
		}
		for i := range fields {
			if string(key) != fields[i].name {
				continue
			}
			p := fields[i].name
			if path != "" {
				p = path + "." + p
			}
			if seen[i] {
				err = errors.New(p + ": given twice")
				return
			}
			seen[i] = true
			if mv.Kind != jsonscan.Null {
				err = fields[i].set(p, mv)
			}
			return
		}
		msg := "unknown field " + strconv.Quote(string(key))
		if path != "" {
			msg = path + ": " + msg
		}
		err = errors.New(msg)
	})
	return err
}

func stringInto(dst *string) func(string, jsonscan.Value) error {
	return func(path string, v jsonscan.Value) error {
		if v.Kind != jsonscan.String {
			return typeError(path, "a string", v)
		}
		*dst, _ = jsonscan.Unquote(v.Raw)
		return nil
	}
}

func stringsInto(dst *[]string) func(string, jsonscan.Value) error {
	return func(path string, v jsonscan.Value) error {
		if v.Kind != jsonscan.Array {
			return typeError(path, "an array of strings", v)
		}
		out := []string{}
		var err error
		jsonscan.Elements(v.Raw, func(e jsonscan.Value) {
			if err != nil {
				return
			}
			if e.Kind != jsonscan.String {
				err = typeError(path+"["+strconv.Itoa(len(out))+"]", "a string", e)
				return
			}
			s, _ := jsonscan.Unquote(e.Raw)
			out = append(out, s)
		})
		if err != nil {
			return err
		}
		*dst = out
		return nil
	}
}

func intInto(dst *int) func(string, jsonscan.Value) error {
	return func(path string, v jsonscan.Value) error {
		if v.Kind != jsonscan.Number {
			return typeError(path, "an integer", v)
		}
		n, err := strconv.ParseInt(string(v.Raw), 10, strconv.IntSize)
		if err != nil {
			return errors.New(path + ": want an integer, got " + string(v.Raw))
		}
		*dst = int(n)
		return nil
	}
}

func boolInto(dst *bool) func(string, jsonscan.Value) error {
	return func(path string, v jsonscan.Value) error {
		if v.Kind != jsonscan.Bool {
			return typeError(path, "true or false", v)
		}
		*dst = v.Raw[0] == 't'
		return nil
	}
}

// typeError reports a value of the wrong kind at path.
func typeError(path, want string, got jsonscan.Value) error {
	if path == "" {
		path = "filter config"
	}
	return errors.New(path + ": want " + want + ", got " + got.Kind.String())
}
