package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/analyzer"
)

func TestPreflightFlags(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.jsonl")
	bad := filepath.Join(dir, "bad.jsonl")
	os.WriteFile(good, []byte(`{"prompt":"2+2?","reference":"4","category":"math"}`+"\n"+`{"prompt":"hello"}`+"\n"), 0o644)
	os.WriteFile(bad, []byte(`{"prompt":"a"}`+"\n"+`{"text":"b"}`+"\n"), 0o644)
	t.Run("no suite and no gates: no pre-flight asked for", func(t *testing.T) {
		p, err := preflightFlags("", 0, 0, 0)
		if p != nil || err != nil {
			t.Fatalf("%+v %v", p, err)
		}
	})
	t.Run("gates without a suite are refused", func(t *testing.T) {
		if _, err := preflightFlags("", 0.2, 0, 0); err == nil || !strings.Contains(err.Error(), "need --preflight") {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("a suite with its gates", func(t *testing.T) {
		p, err := preflightFlags(good, 0.2, 1, 1.3)
		if err != nil || len(p.Suite) != 2 || p.Suite[0].Reference != "4" || p.Gates.MaxNetLossShare != 0.2 || p.Gates.MaxErrors != 1 || p.Gates.MaxLatencyRatio != 1.3 {
			t.Fatalf("%+v %v", p, err)
		}
	})
	t.Run("a bad line is named", func(t *testing.T) {
		if _, err := preflightFlags(bad, 0, 0, 0); err == nil || !strings.Contains(err.Error(), "bad.jsonl: suite line 2") {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("a missing file", func(t *testing.T) {
		if _, err := preflightFlags(filepath.Join(dir, "none.jsonl"), 0, 0, 0); err == nil || !strings.Contains(err.Error(), "--preflight") {
			t.Fatalf("err %v", err)
		}
	})
}

func TestStatusShowsThePreflightsProgressAndVerdict(t *testing.T) {
	pf := &analyzer.PreflightStage{Status: analyzer.PreflightRunning,
		Progress: analyzer.PreflightProgress{Phase: analyzer.PhaseSuite, Warmup: 6, TTFTMedian: 23 * time.Millisecond, SuiteDone: 5, SuiteTotal: 20}}
	var b strings.Builder
	printPreflight(&b, pf)
	if want := "preflight running, suite: warm-up 6 requests (TTFT median 23ms), suite 5 of 20 prompts"; !strings.Contains(b.String(), want) {
		t.Fatalf("status %q lacks %q", b.String(), want)
	}
	v := analyzer.GatePreflight(analyzer.DefaultPreflightPolicy().Gates, analyzer.WarmupResult{Requests: 6, Settled: true}, nil, 0.05)
	pf.Status, pf.Verdict = analyzer.PreflightPassed, &v
	b.Reset()
	printPreflight(&b, pf)
	if !strings.Contains(b.String(), "pre-flight passed: warm-up 6 requests") {
		t.Fatalf("status %q lacks the verdict", b.String())
	}
}

func TestStatusSaysTheShadowStageWaitsForThePreflight(t *testing.T) {
	sh := &analyzer.ShadowStage{Status: analyzer.ShadowRunning, Policy: analyzer.ShadowPolicy{Percent: 20, MaxConcurrent: 8}}
	var b strings.Builder
	printShadow(&b, sh, true)
	if want := "shadow   after the pre-flight: 20 % of user requests will be mirrored"; !strings.Contains(b.String(), want) {
		t.Fatalf("while the pre-flight runs, status %q lacks %q", b.String(), want)
	}
	b.Reset()
	printShadow(&b, sh, false)
	if want := "shadow   running: 20 % of user requests mirrored"; !strings.Contains(b.String(), want) {
		t.Fatalf("after the pre-flight, status %q lacks %q", b.String(), want)
	}
}
