package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
