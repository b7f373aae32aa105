package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/analyzer"
)

func TestHelpListsEverySubcommand(t *testing.T) {
	var buf bytes.Buffer
	usage(&buf)
	for _, name := range []string{"control", "extproc", "analyzer", "rollout", "sim", "bootstrap", "up", "demo", "version", "weights", "certs"} {
		if _, ok := commands[name]; !ok {
			t.Fatalf("subcommand %s is not registered", name)
		}
		if !strings.Contains(buf.String(), "  "+name+" ") {
			t.Fatalf("llmcanary --help does not list %s:\n%s", name, buf.String())
		}
	}
}

func TestEverySubcommandDocumentsItsFlags(t *testing.T) {
	for name, c := range commands {
		t.Run(name, func(t *testing.T) {
			err := c.Run(context.Background(), []string{"--help"})
			if !errors.Is(err, flag.ErrHelp) {
				t.Fatalf("%s --help returned %v, want the help text (flag.ErrHelp)", name, err)
			}
		})
	}
}

func TestStatusShowsStageSamplesAndTheLastDecision(t *testing.T) {
	now := time.Now()
	ro := &analyzer.Rollout{ID: "r-1", Model: "m", Stable: "v1", Canary: "v2", Status: analyzer.RolloutRunning,
		Plan: analyzer.Plan{Policy: analyzer.DefaultPolicy()}, StageStarted: now.Add(-time.Minute),
		Last: &analyzer.Decision{Reason: "hold: 120 of 2000 canary requests"}}
	view := &analyzer.RolloutView{Rollout: ro, Progress: ro.ProgressAt(now)}
	var buf bytes.Buffer
	printStatus(&buf, view)
	for _, want := range []string{"rollout r-1", "v1 → v2", "stage    1 of 5 at 2 %", "of 2000 canary requests", "decision hold: 120 of 2000"} {
		if !strings.Contains(buf.String(), want) {
			t.Fatalf("status lacks %q:\n%s", want, buf.String())
		}
	}
}

func TestFlagsAreTakenAfterTheArgumentsToo(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--wait", "9s", "v1=90", "v2=10"}, "9s [v1=90 v2=10]"},
		{[]string{"v1=90", "v2=10", "--wait", "9s"}, "9s [v1=90 v2=10]"},
		{[]string{"v1=90", "--wait=9s", "v2=10"}, "9s [v1=90 v2=10]"},
		{[]string{"--", "--wait", "9s"}, "5s [--wait 9s]"},
	}
	for _, tc := range cases {
		fs := newFlagSet("x", "")
		wait := fs.Duration("wait", 5*time.Second, "")
		rest, err := parseInterleaved(fs, tc.args)
		if got := fmt.Sprint(*wait, " ", rest); err != nil || got != tc.want {
			t.Errorf("%q: %s (%v), want %s", tc.args, got, err, tc.want)
		}
	}
}
