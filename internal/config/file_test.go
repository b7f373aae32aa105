package config

import (
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// settings is a service's options as the tests bind them.
type settings struct {
	Listen   string
	Interval Duration
	Port     int
	Verbose  bool
	Patterns []string
	Cert     string
	ClientCA string
	Section  *section
}

type section struct {
	Path  string `json:"path"`
	Other string `json:"other_field"`
}

func defaults() settings {
	return settings{Listen: "127.0.0.1:1", Interval: Duration(time.Second), Port: 7, Patterns: []string{"default"}}
}

func (s *settings) bind(fs *flag.FlagSet) {
	fs.StringVar(&s.Listen, "listen", s.Listen, "")
	fs.Var(&s.Interval, "interval", "")
	fs.IntVar(&s.Port, "port", s.Port, "")
	fs.BoolVar(&s.Verbose, "verbose", s.Verbose, "")
	fs.Var(&Strings{P: &s.Patterns}, "pattern", "")
	fs.StringVar(&s.Cert, "tls-cert", s.Cert, "")
	fs.StringVar(&s.ClientCA, "tls-client-ca", s.ClientCA, "")
	fs.Var(&OptionalSection[section]{P: &s.Section,
		SetMain: func(x *section, v string) { x.Path = v },
		Main:    func(x *section) string { return x.Path }}, "section", "")
}

func parse(t *testing.T, file string, args ...string) (settings, error) {
	t.Helper()
	s := defaults()
	if file != "" {
		path := filepath.Join(t.TempDir(), "config.yaml")
		if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append([]string{"--config", path}, args...)
	}
	fs := flag.NewFlagSet("svc", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	err := Parse(fs, args, s.bind)
	return s, err
}

func TestParseMergesDefaultsThenTheFileThenTheCommandLine(t *testing.T) {
	file := `
listen: 0.0.0.0:9
interval: 5m
port: 8080
verbose: true
pattern: [a, b]
tls:
  cert: /etc/c.pem
  client_ca: /etc/ca.pem
section:
  path: /opt/f.wasm
  other_field: kept
`
	s, err := parse(t, file, "--port", "9090", "--pattern", "c", "--section", "/flag/f.wasm")
	if err != nil {
		t.Fatal(err)
	}
	want := settings{Listen: "0.0.0.0:9", Interval: Duration(5 * time.Minute), Port: 9090, Verbose: true,
		Patterns: []string{"c"}, Cert: "/etc/c.pem", ClientCA: "/etc/ca.pem", Section: &section{Path: "/flag/f.wasm", Other: "kept"}}
	if s.Listen != want.Listen || s.Interval != want.Interval || s.Port != want.Port || !s.Verbose ||
		strings.Join(s.Patterns, ",") != "c" || s.Cert != want.Cert || s.ClientCA != want.ClientCA || *s.Section != *want.Section {
		t.Fatalf("settings %+v (section %+v), want %+v (section %+v)", s, s.Section, want, want.Section)
	}
}

func TestParseWithoutAFileKeepsTheDefaultsAndTheFlags(t *testing.T) {
	s, err := parse(t, "", "--listen", "127.0.0.1:2", "--pattern", "x", "--pattern", "y")
	if err != nil {
		t.Fatal(err)
	}
	if s.Listen != "127.0.0.1:2" || s.Port != 7 || strings.Join(s.Patterns, ",") != "x,y" || s.Section != nil {
		t.Fatalf("settings %+v", s)
	}
}

func TestParseFileListReplacesTheDefaultList(t *testing.T) {
	s, err := parse(t, "pattern: [a]\n")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(s.Patterns, ",") != "a" {
		t.Fatalf("patterns %v, want [a]", s.Patterns)
	}
}

func TestParseKeysMayUseUnderscoresForDashes(t *testing.T) {
	s, err := parse(t, "tls_client_ca: /ca.pem\n")
	if err != nil || s.ClientCA != "/ca.pem" {
		t.Fatalf("client CA %q, error %v", s.ClientCA, err)
	}
}

func TestParseRejectsBadFilesNamingTheKey(t *testing.T) {
	tests := []struct {
		name, file, want string
	}{
		{"an unknown key", "listn: x\n", `unknown key "listn"`},
		{"an unknown key inside a prefix mapping", "tls: {crt: x}\n", `unknown key "tls-crt"`},
		{"a value the flag does not parse", "interval: soon\n", `key "interval"`},
		{"a list for a single-valued flag", "listen: [a, b]\n", `key "listen" takes a single value, not a list`},
		{"a mapping for a plain flag", "listen: {a: b}\n", `key "listen" takes a single value, not a mapping`},
		{"an unknown field in a section", "section: {path: p, nope: 1}\n", `key "section"`},
		{"a key without a value", "listen:\n", `key "listen" has no value`},
		{"a file naming another file", "config: other.yaml\n", `cannot name another`},
		{"a file that is not a mapping", "- a\n- b\n", "must be a mapping"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(t, tc.file)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "config.yaml") {
				t.Fatalf("error %v, want one naming the file and %s", err, tc.want)
			}
		})
	}
}

func TestParseReportsEveryBadKeyAtOnce(t *testing.T) {
	_, err := parse(t, "a: 1\nb: 2\n")
	if err == nil || !strings.Contains(err.Error(), `"a"`) || !strings.Contains(err.Error(), `"b"`) {
		t.Fatalf("error %v, want both keys", err)
	}
}

func TestParseMissingFileIsAnError(t *testing.T) {
	s := defaults()
	fs := flag.NewFlagSet("svc", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	err := Parse(fs, []string{"--config", filepath.Join(t.TempDir(), "absent.yaml")}, s.bind)
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("error %v", err)
	}
}

func TestParseEmptyFileChangesNothing(t *testing.T) {
	s, err := parse(t, "# nothing yet\n")
	if err != nil || s.Listen != "127.0.0.1:1" {
		t.Fatalf("settings %+v, error %v", s, err)
	}
}
