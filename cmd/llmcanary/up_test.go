//go:build integration

package main

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"
)

// TestUpStackFileDrivesThePrintedRollout starts `up`'s stack (real
// ClickHouse and Envoy, the services in process), reads <dir>/stack.json as
// a script would, and runs the printed rollout command and `rollout list`
// through the CLI with the printed environment.
func TestUpStackFileDrivesThePrintedRollout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	s, err := startUp(ctx, upOptions{dir: dir, stableProfile: "stable", canaryProfile: "canary-healthy", capture: 0.2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	path, err := writeStackInfo(dir, s.info())
	if err != nil {
		t.Fatal(err)
	}
	var printed strings.Builder
	printStack(&printed, s.info(), path)

	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var info StackInfo
	if err := json.Unmarshal(b, &info); err != nil {
		t.Fatalf("stack.json: %v", err)
	}
	for name, v := range map[string]string{
		"gateway": info.Gateway, "management_api": info.ManagementAPI, "ca": info.CA, "analyzer_api": info.AnalyzerAPI,
		"clickhouse": info.ClickHouse, "judge": info.Judge, "token": info.Token, "force_key": info.ForceKey,
		"metrics.control": info.Metrics["control"], "metrics.telemetry": info.Metrics["telemetry"], "metrics.analyzer": info.Metrics["analyzer"],
		"pools.stable": info.Pools[info.Stable], "pools.canary": info.Pools[info.Canary], "rollout_start": info.RolloutStart,
	} {
		if v == "" {
			t.Errorf("stack.json has no %s", name)
		}
		if name != "rollout_start" && name != "force_key" && name != "token" && !strings.Contains(printed.String(), v) {
			t.Errorf("up does not print %s (%s):\n%s", name, v, printed.String())
		}
	}
	for _, want := range []string{info.Token, info.ForceKey, info.RolloutStart, "llmcanary rollout list"} {
		if !strings.Contains(printed.String(), want) {
			t.Errorf("up does not print %q:\n%s", want, printed.String())
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	for k, v := range info.Env {
		t.Setenv(k, v)
	}
	args := strings.Fields(info.RolloutStart)
	if len(args) < 3 || args[0] != "llmcanary" || args[1] != "rollout" {
		t.Fatalf("printed rollout command %q is not `llmcanary rollout ...`", info.RolloutStart)
	}
	out := stdoutOf(t, func() error { return runRollout(ctx, args[2:]) })
	if !strings.HasPrefix(out, "started ") {
		t.Fatalf("%s printed %q", info.RolloutStart, out)
	}
	id := strings.TrimSuffix(strings.Fields(out)[1], ":")
	list := stdoutOf(t, func() error { return runRollout(ctx, []string{"list"}) })
	if !strings.Contains(list, id) || !strings.Contains(list, info.Canary) {
		t.Fatalf("rollout list does not show %s of %s:\n%s", id, info.Canary, list)
	}
}
