package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

// Parse parses a service's command line the one way every llmcanary
// service does: its defaults, then the YAML file named by --config (which
// Parse adds to fs), then the flags given on the command line. bind
// registers the service's flags on a FlagSet, bound to the fields of the
// service's options; Parse calls it on fs and on fresh FlagSets, so it
// must only define flags.
//
// The file's keys are the flag names ("data-dir: /var/lib/x"; "_" may
// stand for "-", so data_dir is the same key). A value is what the flag
// would take, written as YAML: a string, a number, a boolean, a list for
// a repeatable flag (the list replaces the default). A mapping under a key
// that is not a flag stands for flags with the key as prefix
// ("tls: {cert: a}" is "tls-cert: a"); a flag whose Value is a Section
// takes a whole mapping instead. An unknown key, a value of the wrong
// type or a "config" key is an error that names the key and the file.
func Parse(fs *flag.FlagSet, args []string, bind func(*flag.FlagSet)) error {
	bind(fs)
	path := fs.String(configFlag, "", "YAML file of settings: its keys are these flags' names (see docs/configuration.md); flags given here override it")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *path == "" {
		return nil
	}
	fromFile := quietFlagSet(fs.Name(), bind)
	if err := ApplyFile(fromFile, *path); err != nil {
		return err
	}
	// The command line again, over the file: it wins key by key.
	return quietFlagSet(fs.Name(), bind).Parse(args)
}

const configFlag = "config"

// quietFlagSet is a FlagSet with the service's flags and --config, for
// the file and the second pass over the command line.
func quietFlagSet(name string, bind func(*flag.FlagSet)) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	bind(fs)
	fs.String(configFlag, "", "")
	return fs
}

// Section is a flag.Value that also takes a whole mapping from a config
// file: SetSection gets the mapping as JSON.
type Section interface {
	flag.Value
	SetSection(raw []byte) error
}

// Repeated marks a flag.Value that takes a list in a config file, one Set
// per element.
type Repeated interface {
	flag.Value
	Repeated()
}

// ApplyFile sets fs's flags from the YAML file at path (see Parse for its
// keys and values).
func ApplyFile(fs *flag.FlagSet, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if err := Apply(fs, b); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	return nil
}

// Apply sets fs's flags from a YAML document, reporting every bad key at
// once.
func Apply(fs *flag.FlagSet, doc []byte) error {
	j, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return err
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(j, &top); err != nil {
		if bytes.Equal(bytes.TrimSpace(j), []byte("null")) {
			return nil // an empty file
		}
		return errors.New("the file must be a mapping of flag names to values")
	}
	var errs []error
	for _, key := range sortedKeys(top) {
		errs = append(errs, applyKey(fs, key, top[key]))
	}
	return errors.Join(errs...)
}

func applyKey(fs *flag.FlagSet, key string, raw json.RawMessage) error {
	name := strings.ReplaceAll(key, "_", "-")
	if name == configFlag {
		return fmt.Errorf("key %q: a config file cannot name another one", key)
	}
	if bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return fmt.Errorf("key %q has no value", key)
	}
	f := fs.Lookup(name)
	var mapping map[string]json.RawMessage
	isMapping := json.Unmarshal(raw, &mapping) == nil && bytes.HasPrefix(bytes.TrimSpace(raw), []byte("{"))
	switch {
	case f == nil && isMapping && hasPrefixedFlag(fs, name+"-"):
		var errs []error
		for _, sub := range sortedKeys(mapping) {
			errs = append(errs, applyKey(fs, name+"-"+sub, mapping[sub]))
		}
		return errors.Join(errs...)
	case f == nil:
		return fmt.Errorf("unknown key %q: the keys are the flags (%s)", key, flagNames(fs))
	case isMapping:
		s, ok := f.Value.(Section)
		if !ok {
			return fmt.Errorf("key %q takes a single value, not a mapping", key)
		}
		if err := s.SetSection(raw); err != nil {
			return fmt.Errorf("key %q: %w", key, err)
		}
		return nil
	}
	var list []json.RawMessage
	if json.Unmarshal(raw, &list) == nil {
		if _, ok := f.Value.(Repeated); !ok {
			return fmt.Errorf("key %q takes a single value, not a list", key)
		}
		for _, item := range list {
			if err := setScalar(fs, name, key, item); err != nil {
				return err
			}
		}
		return nil
	}
	return setScalar(fs, name, key, raw)
}

func setScalar(fs *flag.FlagSet, name, key string, raw json.RawMessage) error {
	var v any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return fmt.Errorf("key %q: %w", key, err)
	}
	var s string
	switch x := v.(type) {
	case string:
		s = x
	case json.Number:
		s = x.String()
	case bool:
		s = fmt.Sprint(x)
	default:
		return fmt.Errorf("key %q takes a single value", key)
	}
	if err := fs.Set(name, s); err != nil {
		return fmt.Errorf("key %q: %w", key, err)
	}
	return nil
}

func hasPrefixedFlag(fs *flag.FlagSet, prefix string) bool {
	found := false
	fs.VisitAll(func(f *flag.Flag) { found = found || strings.HasPrefix(f.Name, prefix) })
	return found
}

func flagNames(fs *flag.FlagSet) string {
	var names []string
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name != configFlag {
			names = append(names, f.Name)
		}
	})
	return strings.Join(names, ", ")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Strings is a repeatable string flag: the first Set replaces the
// default, later ones add to it.
type Strings struct {
	P   *[]string
	set bool
}

// String joins the values.
func (s *Strings) String() string {
	if s == nil || s.P == nil {
		return ""
	}
	return strings.Join(*s.P, " | ")
}

// Set adds one value.
func (s *Strings) Set(v string) error {
	if !s.set {
		*s.P, s.set = nil, true
	}
	*s.P = append(*s.P, v)
	return nil
}

// Repeated marks Strings as taking a list in a config file.
func (s *Strings) Repeated() {}

// OptionalSection is the flag of an optional section of options (a *T
// that is nil when the section is off): on the command line it sets the
// section's main field through SetMain, creating the section; in a config
// file the key may also hold the whole section as a mapping, decoded
// strictly into T by its JSON field names.
type OptionalSection[T any] struct {
	P       **T
	SetMain func(*T, string)
	Main    func(*T) string
}

// String returns the main field.
func (s *OptionalSection[T]) String() string {
	if s == nil || s.P == nil || *s.P == nil {
		return ""
	}
	return s.Main(*s.P)
}

// Set sets the main field, creating the section.
func (s *OptionalSection[T]) Set(v string) error {
	if *s.P == nil {
		*s.P = new(T)
	}
	s.SetMain(*s.P, v)
	return nil
}

// SetSection replaces the section with the mapping.
func (s *OptionalSection[T]) SetSection(raw []byte) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	v := new(T)
	if err := dec.Decode(v); err != nil {
		return err
	}
	*s.P = v
	return nil
}

var (
	_ Repeated = (*Strings)(nil)
	_ Section  = (*OptionalSection[struct{}])(nil)
)
