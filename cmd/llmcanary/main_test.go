package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
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

func TestRolloutStatusShowsEveryArmOfAnABNExperiment(t *testing.T) {
	ro := &analyzer.Rollout{ID: "r-2", Model: "m", Stable: "v1", Canary: "v2", Mode: analyzer.ModeABTest, Status: analyzer.RolloutRunning,
		Candidates: []analyzer.Candidate{
			{Version: "v2", Split: 20, Status: analyzer.ArmDropped, Reason: "v2 dropped: quality worse"},
			{Version: "v3", Split: 30, Status: analyzer.ArmRunning, Report: &analyzer.ExperimentReport{Metrics: []analyzer.ExperimentMetric{{Metric: analyzer.MetricQuality, Status: "undecided", Adjusted: 0.4}}}},
		},
		ABN: &analyzer.ABNReport{Summary: "no arm decided yet"}}
	var buf bytes.Buffer
	printStatus(&buf, &analyzer.RolloutView{Rollout: ro})
	for _, want := range []string{"stable v1 70 %", "v2            20 %  dropped", "v2 dropped: quality worse", "v3            30 %  running", "adjusted=0.4000", "result   no arm decided yet"} {
		if !strings.Contains(buf.String(), want) {
			t.Fatalf("status lacks %q:\n%s", want, buf.String())
		}
	}
}

func TestSplitFlagTakesOnePercentageOrOnePerCandidate(t *testing.T) {
	cases := []struct {
		in      string
		split   float64
		splits  map[string]float64
		wantErr bool
	}{
		{in: "20", split: 20},
		{in: "v2=20,v3=10", splits: map[string]float64{"v2": 20, "v3": 10}},
		{in: "v2=20,v2=10", wantErr: true},
		{in: "v2=x", wantErr: true},
		{in: "twenty", wantErr: true},
	}
	for _, tc := range cases {
		var req analyzer.StartRequest
		err := parseSplit(tc.in, &req)
		if (err != nil) != tc.wantErr {
			t.Fatalf("%q: error %v", tc.in, err)
		}
		if err == nil && (req.Split != tc.split || fmt.Sprint(req.Splits) != fmt.Sprint(tc.splits)) {
			t.Errorf("%q: split %v splits %v", tc.in, req.Split, req.Splits)
		}
	}
}

// The analyzer's rollout API is stood in for by a handler that records the
// start request (the CLI's parsing is what is tested here).
func TestRolloutRevertAsksTheAnalyzerForARevertOfTheModel(t *testing.T) {
	var got analyzer.StartRequest
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/rollouts" {
			http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusNotFound)
			return
		}
		if err := json.NewDecoder(r.Body).Decode(&got); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(analyzer.RolloutView{Rollout: &analyzer.Rollout{ID: "r-2", Model: got.Model, Stable: "v2", Canary: "v1"}})
	}))
	defer srv.Close()
	t.Setenv("LLMCANARY_API_TOKEN", "tok")
	if err := runRollout(context.Background(), []string{"revert", "llama", "--analyzer", srv.URL}); err != nil {
		t.Fatal(err)
	}
	if got.Model != "llama" || !got.Revert || got.Shadow != nil || got.Preflight != nil || got.NoPreflight || got.Mode != "" {
		t.Fatalf("revert sent %+v, want a plain revert of llama", got)
	}
}
