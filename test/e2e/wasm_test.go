//go:build integration

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/internal/local"
	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/xds"
)

func user(i int) map[string]string {
	return map[string]string{wire.HeaderUserID: fmt.Sprintf("user-%d", i)}
}

// TestStickyUsersStayInCanaryAsWeightGrows walks a canary through the
// default stages with the wasm filter bucketing real users: at every stage
// each user sees one version on every request, the share of users in the
// canary matches its weight, and no user who was in the canary leaves it.
func TestStickyUsersStayInCanaryAsWeightGrows(t *testing.T) {
	f := startFleet(t, fleetOptions{wasm: true, stableW: 100})
	ctx := context.Background()
	const users = 500
	inCanary := map[int]bool{}
	for _, stage := range []float64{2, 5, 10, 25, 50, 100} {
		if _, err := f.API.SetWeights(ctx, model, map[string]float64{"v1": 100 - stage, "v2": stage}, ""); err != nil {
			t.Fatal(err)
		}
		if err := f.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
		perUser := 3
		if stage == 10 {
			perUser = 10
		}
		answers := f.parallel(t, users*perUser, func(i int) request { return request{headers: user(i % users)} })
		seen := map[int]string{}
		for i, a := range answers {
			u := i % users
			if a.status != 200 || a.version != a.servedBy {
				t.Fatalf("stage %v%% user %d: status %d, announced %q, served by %q: %s", stage, u, a.status, a.version, a.servedBy, a.body)
			}
			if prev, ok := seen[u]; ok && prev != a.version {
				t.Fatalf("stage %v%%: user %d saw both %s and %s", stage, u, prev, a.version)
			}
			seen[u] = a.version
		}
		canary := 0
		for u, v := range seen {
			if v == "v2" {
				canary++
			} else if inCanary[u] {
				t.Fatalf("stage %v%%: user %d was in the canary at an earlier stage and left it", stage, u)
			}
		}
		for u, v := range seen {
			if v == "v2" {
				inCanary[u] = true
			}
		}
		lo, hi := binomialBounds(users, stage/100, 3.29)
		t.Logf("stage %5.1f%%: %3d of %d users in the canary (99.9%% interval %.0f..%.0f)", stage, canary, users, lo, hi)
		if stage < 100 && (float64(canary) < lo || float64(canary) > hi) {
			t.Fatalf("stage %v%%: %d of %d users in the canary, outside %.0f..%.0f", stage, canary, users, lo, hi)
		}
		if stage == 100 && canary != users {
			t.Fatalf("at 100%% only %d of %d users are in the canary", canary, users)
		}
	}
}

func TestClientCannotChooseItsVersionButOperatorCan(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join(dir, "force-keys")
	if err := os.WriteFile(keys, []byte("operator-key-A\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := startFleet(t, fleetOptions{stableW: 50, stack: withWasm(t, keys)})

	// Find a user on each version.
	var onStable, onCanary map[string]string
	for i := 0; onStable == nil || onCanary == nil; i++ {
		a := f.do(t, request{headers: user(i)})
		if a.version == "v1" && onStable == nil {
			onStable = user(i)
		}
		if a.version == "v2" && onCanary == nil {
			onCanary = user(i)
		}
	}
	noInternal := func(a answer) {
		t.Helper()
		if strings.Contains(a.saw, wire.HeaderKey) {
			t.Fatalf("the operator key reached the pool (it saw %s)", a.saw)
		}
	}

	cases := []struct {
		name     string
		headers  map[string]string
		want     string
		forceHdr bool // whether the pool may see x-llmcanary-force
	}{
		{"spoofed force without a key changes nothing", with(onStable, wire.HeaderForce, "v2"), "v1", false},
		{"force with a wrong key changes nothing", with(onStable, wire.HeaderForce, "v2", wire.HeaderKey, "guess"), "v1", false},
		{"a client's own bucket header is ignored", with(onStable, wire.HeaderBucket, bucketFor(9999, 5)), "v1", false},
		{"a client's own bucket header is ignored (canary user)", with(onCanary, wire.HeaderBucket, bucketFor(0, 5)), "v2", false},
		{"operator key pins the stable user to the canary", with(onStable, wire.HeaderForce, "v2", wire.HeaderKey, "operator-key-A"), "v2", true},
		{"operator key pins the canary user to stable", with(onCanary, wire.HeaderForce, "v1", wire.HeaderKey, "operator-key-A"), "v1", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for i := 0; i < 20; i++ {
				a := f.do(t, request{headers: c.headers})
				if a.status != 200 || a.servedBy != c.want {
					t.Fatalf("request %d: %d served by %q, want %q", i, a.status, a.servedBy, c.want)
				}
				noInternal(a)
				if got := strings.Contains(a.saw, wire.HeaderForce); got != c.forceHdr {
					t.Fatalf("pool saw force header: %v, want %v (saw %s)", got, c.forceHdr, a.saw)
				}
				if !strings.Contains(a.saw, wire.HeaderBucket) {
					t.Fatalf("the filter did not set the bucket (pool saw %s)", a.saw)
				}
			}
		})
	}

	t.Run("keys rotate without restarting Envoy", func(t *testing.T) {
		pid := f.Envoys[0].Proc.Pid()
		if err := os.WriteFile(keys, []byte("operator-key-B\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(15 * time.Second)
		for {
			a := f.do(t, request{headers: with(onStable, wire.HeaderForce, "v2", wire.HeaderKey, "operator-key-B")})
			if a.servedBy == "v2" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the new key was not accepted within 15 s")
			}
			time.Sleep(100 * time.Millisecond)
		}
		if a := f.do(t, request{headers: with(onStable, wire.HeaderForce, "v2", wire.HeaderKey, "operator-key-A")}); a.servedBy != "v1" {
			t.Fatalf("the removed key still pins versions")
		}
		if f.Envoys[0].Proc.Pid() != pid || f.Envoys[0].Proc.Exited() {
			t.Fatal("Envoy was restarted")
		}
	})
}

func withWasm(t *testing.T, keysFile string) local.Options {
	return local.Options{Wasm: &xds.WasmOptions{
		Path: wasmModule(t), HashKey: "e2e-fleet-hash-key-0123456789", ForceKeysFile: keysFile,
	}}
}

func TestModelComesFromTheBodyAndBadBodiesGetOpenAIErrors(t *testing.T) {
	f := startFleet(t, fleetOptions{wasm: true, stableW: 100})
	big := `{"model":"` + model + `","messages":[{"role":"user","content":"` + strings.Repeat("x", 1200<<10) + `"}]}`
	cases := []struct {
		name   string
		body   string
		status int
		code   string
	}{
		{"model in the body routes", `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}],"max_tokens":2}`, 200, ""},
		{"unknown model", `{"model":"gpt-9","messages":[]}`, 404, "model_not_found"},
		{"malformed JSON", `{"model":`, 400, ""},
		{"no model", `{"messages":[]}`, 400, ""},
		{"body over the cap", big, 413, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := f.do(t, request{body: c.body, headers: user(1)})
			if a.status != c.status {
				t.Fatalf("status %d, want %d: %.200s", a.status, c.status, a.body)
			}
			if c.status != 200 && !strings.Contains(a.body, `"error"`) {
				t.Fatalf("error is not OpenAI-style JSON: %.200s", a.body)
			}
			if c.code != "" && !strings.Contains(a.body, c.code) {
				t.Fatalf("error body lacks %q: %.200s", c.code, a.body)
			}
		})
	}
}

func TestTwoEnvoysRouteEachUserIdentically(t *testing.T) {
	f := startFleet(t, fleetOptions{wasm: true, envoys: 2, stableW: 70})
	const users = 300
	a0 := f.parallel(t, users, func(i int) request { return request{gateway: 0, headers: user(i)} })
	a1 := f.parallel(t, users, func(i int) request { return request{gateway: 1, headers: user(i)} })
	for i := 0; i < users; i++ {
		if a0[i].status != 200 || a0[i].servedBy != a1[i].servedBy {
			t.Fatalf("user %d: gw-0 %d %q, gw-1 %d %q", i, a0[i].status, a0[i].servedBy, a1[i].status, a1[i].servedBy)
		}
	}
}

// The test client plays the trusted hop in front of Envoy that sets the
// category (category_header_trusted).
func TestCategoryOverrideSendsACategoryToTheChosenVersion(t *testing.T) {
	f := startFleet(t, fleetOptions{stableW: 100, stack: local.Options{Wasm: &xds.WasmOptions{
		Path: wasmModule(t), HashKey: "e2e-fleet-hash-key-0123456789", CategoryHeaderTrusted: true,
	}}})
	f.overrideCategory(t, "code", "v2")
	for i := 0; i < 50; i++ {
		code := f.do(t, request{headers: with(user(i), wire.HeaderCategory, "code")})
		chat := f.do(t, request{headers: with(user(i), wire.HeaderCategory, "chat")})
		if code.servedBy != "v2" || chat.servedBy != "v1" {
			t.Fatalf("user %d: category code → %q (want v2), chat → %q (want v1)", i, code.servedBy, chat.servedBy)
		}
	}
}

// Without category_header_trusted (the default) a category routes nothing:
// the filter drops a client's x-llmcanary-category, so naming the category
// of an override does not pick its version.
func TestClientCannotPickAVersionByNamingACategory(t *testing.T) {
	f := startFleet(t, fleetOptions{wasm: true, stableW: 100})
	f.overrideCategory(t, "code", "v2")
	for i := 0; i < 20; i++ {
		a := f.do(t, request{headers: with(user(i), wire.HeaderCategory, "code")})
		if a.status != 200 || a.servedBy != "v1" {
			t.Fatalf("user %d naming category code: %d served by %q, want v1 (stable at 100 %%)", i, a.status, a.servedBy)
		}
		if strings.Contains(a.saw, wire.HeaderCategory) {
			t.Fatalf("user %d: the pool received %s (%s)", i, wire.HeaderCategory, a.saw)
		}
	}
}

// with returns a copy of h with the given header pairs added.
func with(h map[string]string, kv ...string) map[string]string {
	out := map[string]string{}
	for k, v := range h {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

// With the default identity sources (x-user-id, then the body's "user"), a
// client that names its user only the OpenAI way is still sticky.
func TestUserNamedOnlyInTheOpenAIBodyFieldSeesOneVersion(t *testing.T) {
	f := startFleet(t, fleetOptions{wasm: true, stableW: 50})
	const users, each = 10, 20
	answers := f.parallel(t, users*each, func(i int) request {
		return request{body: fmt.Sprintf(`{"model":%q,"user":"openai-user-%d","messages":[{"role":"user","content":"hi"}],"max_tokens":2}`, model, i%users)}
	})
	seen := map[int]map[string]int{}
	for i, a := range answers {
		if a.status != 200 {
			t.Fatalf("request %d: %d %s", i, a.status, a.body)
		}
		u := i % users
		if seen[u] == nil {
			seen[u] = map[string]int{}
		}
		seen[u][a.servedBy]++
	}
	both := 0
	for u := 0; u < users; u++ {
		if len(seen[u]) > 1 {
			both++
			t.Errorf("user %d (body field only) saw both versions: %v", u, seen[u])
		}
	}
	if both > 0 {
		t.Fatalf("%d of %d users saw both versions", both, users)
	}
}

// overrideCategory routes a category to a version and waits until the
// fleet serves it.
func (f *fleet) overrideCategory(t *testing.T, category, version string) {
	t.Helper()
	ctx := context.Background()
	m, err := f.API.Model(ctx, model)
	if err != nil {
		t.Fatal(err)
	}
	m.CategoryOverrides = map[string]string{category: version}
	if _, err := f.API.PutModel(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
}
