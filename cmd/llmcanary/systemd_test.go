package main

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/llmcanary/llmcanary/analyzer/analyzersvc"
	"github.com/llmcanary/llmcanary/extproc/extprocsvc"
	"github.com/llmcanary/llmcanary/internal/config"
	"github.com/llmcanary/llmcanary/xds"
)

// The systemd units in deploy/systemd run the binary installed as
// unitBinary with config files installed from deploy/systemd/etc to
// unitConfigDir.
const (
	unitDir       = "../../deploy/systemd"
	unitBinary    = "/usr/local/bin/llmcanary"
	unitConfigDir = "/etc/llmcanary/"
)

// unit is one systemd unit file: its settings by key, in order.
type unit struct {
	name     string
	settings map[string][]string
}

func readUnits(t *testing.T) []unit {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(unitDir, "*.service"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no units in %s (%v)", unitDir, err)
	}
	var units []unit
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		u := unit{name: filepath.Base(p), settings: map[string][]string{}}
		text := strings.ReplaceAll(string(b), "\\\n", " ")
		for _, line := range strings.Split(text, "\n") {
			line = strings.TrimSpace(line)
			if line == "" || line[0] == '#' || line[0] == ';' || line[0] == '[' {
				continue
			}
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: not a setting: %q", u.name, line)
			}
			u.settings[k] = append(u.settings[k], v)
		}
		units = append(units, u)
	}
	return units
}

// commandLine splits an Exec line as systemd does for the cases the units
// use: prefixes, quotes, specifiers (%H and %t), and `/bin/sh -c 'exec CMD
// > FILE'` reduced to CMD.
func commandLine(t *testing.T, exec string) []string {
	t.Helper()
	exec = strings.TrimLeft(exec, "-@:+!")
	exec = strings.NewReplacer("%H", "gw-test", "%t", "/run").Replace(exec)
	args := splitQuoted(t, exec)
	if len(args) == 3 && args[0] == "/bin/sh" && args[1] == "-c" {
		script := args[2]
		if before, _, ok := strings.Cut(script, ">"); ok {
			script = before
		}
		args = splitQuoted(t, strings.TrimPrefix(strings.TrimSpace(script), "exec "))
	}
	return args
}

func splitQuoted(t *testing.T, s string) []string {
	t.Helper()
	var args []string
	var cur strings.Builder
	in, quote := false, byte(0)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
			cur.WriteByte(c)
		case c == '\'' || c == '"':
			quote, in = c, true
		case c == ' ' || c == '\t':
			if in {
				args, in = append(args, cur.String()), false
				cur.Reset()
			}
		default:
			cur.WriteByte(c)
			in = true
		}
	}
	if quote != 0 {
		t.Fatalf("unterminated quote in %q", s)
	}
	if in {
		args = append(args, cur.String())
	}
	return args
}

// repoConfig maps an installed config path to its file in the repository.
func repoConfig(t *testing.T, args []string) []string {
	t.Helper()
	out := append([]string(nil), args...)
	for i, a := range out {
		if strings.HasPrefix(a, unitConfigDir) && strings.HasSuffix(a, ".yaml") {
			out[i] = filepath.Join(unitDir, "etc", strings.TrimPrefix(a, unitConfigDir))
			if _, err := os.Stat(out[i]); err != nil {
				t.Errorf("%s names %s, which deploy/systemd/etc does not hold", strings.Join(args, " "), a)
			}
		}
	}
	return out
}

// TestSystemdUnitsRunCommandsTheBinaryAccepts parses every unit's
// ExecStart and ExecStartPre that runs llmcanary, runs that subcommand's
// flag parsing with the config file the unit names (strict: an unknown
// flag or key fails), validates the options, and checks that the state a
// service writes lies in its StateDirectory (ProtectSystem=strict makes
// the rest read-only).
func TestSystemdUnitsRunCommandsTheBinaryAccepts(t *testing.T) {
	ran := map[string]bool{}
	for _, u := range readUnits(t) {
		t.Run(u.name, func(t *testing.T) {
			lines := append(append([]string(nil), u.settings["ExecStartPre"]...), u.settings["ExecStart"]...)
			if len(u.settings["ExecStart"]) != 1 {
				t.Fatalf("want one ExecStart, have %d", len(u.settings["ExecStart"]))
			}
			for _, line := range lines {
				args := commandLine(t, line)
				if len(args) < 2 || args[0] != unitBinary {
					continue
				}
				sub, rest := args[1], repoConfig(t, args[2:])
				ran[sub] = true
				state := ""
				if dirs := u.settings["StateDirectory"]; len(dirs) == 1 {
					state = "/var/lib/" + dirs[0]
				}
				switch sub {
				case "control":
					o := xds.DefaultOptions()
					o.Token = "set-by-token-file"
					checkUnitService(t, sub, rest, func(fs *flag.FlagSet) { bindControl(fs, &o) },
						func() error { return o.Validate() }, "data-dir", func() string { return o.DataDir }, state)
				case "extproc":
					o := extprocsvc.Defaults()
					checkUnitService(t, sub, rest, func(fs *flag.FlagSet) { bindExtproc(fs, &o) },
						func() error { return o.Validate() }, "spool-dir", func() string { return o.SpoolDir }, state)
				case "analyzer":
					o := analyzersvc.Defaults()
					o.Token = "set-by-token-file"
					checkUnitService(t, sub, rest, func(fs *flag.FlagSet) { bindAnalyzer(fs, &o) },
						func() error { return o.Validate() }, "data-dir", func() string { return o.DataDir }, state)
				case "bootstrap":
					out := stdoutOf(t, func() error { return commands["bootstrap"].Run(context.Background(), rest) })
					var doc map[string]any
					if err := yaml.Unmarshal([]byte(out), &doc); err != nil || doc["dynamic_resources"] == nil {
						t.Errorf("llmcanary %s printed no bootstrap with dynamic_resources (%v):\n%s", strings.Join(rest, " "), err, out)
					}
				default:
					t.Errorf("runs llmcanary %s, which no test checks", sub)
				}
			}
		})
	}
	for _, sub := range []string{"control", "extproc", "analyzer", "bootstrap"} {
		if !ran[sub] {
			t.Errorf("no unit runs llmcanary %s", sub)
		}
	}
}

// checkUnitService parses a service's unit command line with bind (the
// config file strictly), validates the options, and checks that the
// directory the service writes (key, read by dir after parsing) is its
// StateDirectory, the one place ProtectSystem=strict leaves writable.
func checkUnitService(t *testing.T, sub string, args []string, bind func(*flag.FlagSet), validate func() error, key string, dir func() string, state string) {
	t.Helper()
	fs := flag.NewFlagSet(sub, flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	if err := config.Parse(fs, args, bind); err != nil {
		t.Fatalf("llmcanary %s %s: %v", sub, strings.Join(args, " "), err)
	}
	if fs.NArg() > 0 {
		t.Fatalf("llmcanary %s: unexpected arguments %v", sub, fs.Args())
	}
	if err := validate(); err != nil {
		t.Errorf("llmcanary %s with the unit's settings: %v", sub, err)
	}
	switch d := filepath.Clean(dir()); {
	case state == "":
		t.Errorf("llmcanary %s writes %s %s but its unit has no StateDirectory", sub, key, d)
	case d != state:
		t.Errorf("llmcanary %s writes %s %s, not its StateDirectory %s (read-only under ProtectSystem=strict)", sub, key, d, state)
	}
}

// TestSystemdUnitsAreHardened checks the sandboxing every unit carries.
func TestSystemdUnitsAreHardened(t *testing.T) {
	want := map[string]string{
		"DynamicUser": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
		"NoNewPrivileges": "yes", "CapabilityBoundingSet": "", "RestrictNamespaces": "yes",
		"SystemCallArchitectures": "native", "SupplementaryGroups": "llmcanary", "UMask": "0077",
	}
	for _, u := range readUnits(t) {
		for k, v := range want {
			if got := u.settings[k]; len(got) != 1 || got[0] != v {
				t.Errorf("%s: %s=%v, want %s=%s", u.name, k, got, k, v)
			}
		}
		if len(u.settings["SystemCallFilter"]) == 0 {
			t.Errorf("%s has no SystemCallFilter", u.name)
		}
	}
}
