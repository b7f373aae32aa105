package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/llmcanary/llmcanary/analyzer/analyzersvc"
	"github.com/llmcanary/llmcanary/internal/local"
	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/sim"
	"github.com/llmcanary/llmcanary/xds"
)

func init() {
	register(command{
		Name:    "up",
		Summary: "run a whole local stack: ClickHouse, Envoy, control plane, telemetry, analyzer and two simulated versions",
		Run:     runUp,
	})
}

// upStack is what `up` and `demo` start: a model served by a stable and a
// canary pool behind one Envoy with both filters, telemetry into ClickHouse,
// and the analyzer steering it.
type upStack struct {
	*local.Local
	Stable, Canary *local.SimServer
	Judge          *local.SimServer
	Analyzer       *analyzersvc.Service
	Model          string
	// ForceKey is the operator key that makes x-llmcanary-force count.
	ForceKey string
	dir      string
}

// localForceKey is the force key a new local stack's key file holds.
const localForceKey = "local-operator-key"

type upOptions struct {
	dir           string
	stableProfile string
	canaryProfile string
	// stable and canary, when set, are used instead of the named profiles.
	stable, canary *sim.Profile
	canaryWeight   float64
	capture        float64
	log            *slog.Logger
	// analyzer, when set, adjusts the analyzer's options before it starts
	// (the demo compresses the policy and grades every answer).
	analyzer func(*analyzersvc.Options)
}

func startUp(ctx context.Context, o upOptions) (*upStack, error) {
	if err := os.MkdirAll(o.dir, 0o755); err != nil {
		return nil, err
	}
	stable, canary, err := o.profiles()
	if err != nil {
		return nil, err
	}
	wasm := os.Getenv("LLMCANARY_WASM")
	if wasm == "" {
		exe, _ := os.Executable()
		wasm = filepath.Join(filepath.Dir(exe), "llmcanary-filter.wasm")
	}
	if _, err := os.Stat(wasm); err != nil {
		return nil, fmt.Errorf("wasm filter module not found at %s (run make build, or set LLMCANARY_WASM): %w", wasm, err)
	}
	keys := filepath.Join(o.dir, "force-keys")
	if _, err := os.Stat(keys); err != nil {
		if err := os.WriteFile(keys, []byte(localForceKey+"\n"), 0o600); err != nil {
			return nil, err
		}
	}
	forceKey, err := firstKey(keys)
	if err != nil {
		return nil, err
	}
	lo := local.Options{
		Dir: o.dir, Telemetry: true, Log: o.log,
		Wasm: &xds.WasmOptions{Path: wasm, HashKey: "local-fleet-hash-key-change-me", ForceKeysFile: keys},
	}
	lo.Capture.Rate = o.capture
	l, err := local.Start(ctx, lo)
	if err != nil {
		return nil, err
	}
	s := &upStack{Local: l, Model: stable.Model, ForceKey: forceKey, dir: o.dir}
	for _, p := range []struct {
		dst  **local.SimServer
		prof sim.Profile
	}{{&s.Stable, stable}, {&s.Canary, canary}, {&s.Judge, sim.Profile{Version: "judge", Judge: true}}} {
		srv, err := local.StartSim(p.prof)
		if err != nil {
			l.Stop()
			return nil, err
		}
		*p.dst = srv
		l.OnStop(srv.Stop)
	}
	meta := xds.VersionMetadata{BaseModel: stable.Model, Family: "llama-3", ParametersB: 8, PriceInputPer1K: 0.0005, PriceOutputPer1K: 0.0015}
	canaryMeta := meta
	canaryMeta.WeightsHash = "sha256:fine-tuned"
	meta.WeightsHash = "sha256:base"
	_, err = l.API.PutModel(ctx, &xds.Model{
		Name: stable.Model, Stable: stable.Version,
		Versions: []xds.Version{
			{Name: stable.Version, Endpoints: []string{s.Stable.Addr}, Metadata: meta},
			{Name: canary.Version, Endpoints: []string{s.Canary.Addr}, Metadata: canaryMeta},
		},
		Weights: map[string]float64{stable.Version: 100 - o.canaryWeight, canary.Version: o.canaryWeight},
	})
	if err == nil {
		err = l.WaitReady(ctx)
	}
	if err == nil {
		s.Analyzer, err = s.startAnalyzer(ctx, o)
	}
	if err != nil {
		l.Stop()
		return nil, err
	}
	return s, nil
}

// startAnalyzer runs the analyzer in process against the stack: its
// rollout API serves TLS with the stack's certificates and token, it reads
// the stack's ClickHouse, steers the control plane and asks the simulated
// judge; its pre-flight requests go through the stack's gateway.
func (s *upStack) startAnalyzer(ctx context.Context, o upOptions) (*analyzersvc.Service, error) {
	ao := analyzersvc.Defaults()
	ao.Listen, ao.DataDir, ao.Token = "127.0.0.1:0", filepath.Join(o.dir, "analyzer"), local.DevToken
	ao.ControlPlane, ao.ControlPlaneCA, ao.ClickHouse = s.CP.APIURL, s.Certs.CA(), s.ClickHouse.Addr
	ao.TLS = s.Certs.ServerFiles()
	ao.JudgeEndpoint = "http://" + s.Judge.Addr
	// The pre-flight stages send their forced requests through the
	// stack's first Envoy with the stack's force key.
	ao.GatewayURL, ao.ForceKey = "http://"+s.Gateway[0], s.ForceKey
	ao.Logger = o.log
	if o.analyzer != nil {
		o.analyzer(&ao)
	}
	an, err := analyzersvc.Start(ctx, ao)
	if err != nil {
		return nil, fmt.Errorf("analyzer: %w", err)
	}
	s.OnStop(an.Stop)
	return an, nil
}

// firstKey returns the first non-empty, non-comment line of a force-keys
// file.
func firstKey(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			return line, nil
		}
	}
	return "", fmt.Errorf("%s holds no force key", path)
}

// StackInfo is `up`'s <dir>/stack.json: every address of the running stack
// and the credentials a script needs to drive it.
type StackInfo struct {
	// Gateway is Envoy's OpenAI API base URL; Model the model it serves,
	// Stable and Canary its two versions.
	Gateway string `json:"gateway"`
	Model   string `json:"model"`
	Stable  string `json:"stable"`
	Canary  string `json:"canary"`
	// ManagementAPI is the control plane's API (https), verified by CA.
	ManagementAPI string `json:"management_api"`
	CA            string `json:"ca"`
	// AnalyzerAPI is the rollout API (https, same CA).
	AnalyzerAPI string `json:"analyzer_api"`
	// ClickHouse is the native-protocol address; Database the telemetry's.
	ClickHouse string `json:"clickhouse"`
	Database   string `json:"database"`
	// Metrics are the Prometheus endpoints by service.
	Metrics map[string]string `json:"metrics"`
	// EnvoyAdmin is Envoy's admin interface.
	EnvoyAdmin string `json:"envoy_admin"`
	// Judge is the simulated judge's base URL; Pools the pools by version.
	Judge string            `json:"judge"`
	Pools map[string]string `json:"pools"`
	// Token authorises both APIs; ForceKey makes x-llmcanary-force count.
	Token         string `json:"token"`
	ForceKey      string `json:"force_key"`
	ForceKeysFile string `json:"force_keys_file"`
	// Env is the environment the CLI reads (llmcanary rollout, weights).
	Env map[string]string `json:"env"`
	// RolloutStart is a first rollout command that works as written with
	// Env set.
	RolloutStart string `json:"rollout_start"`
}

// info describes the running stack.
func (s *upStack) info() StackInfo {
	token := local.DevToken
	return StackInfo{
		Gateway: "http://" + s.Gateway[0], Model: s.Model, Stable: s.Stable.Profile.Version, Canary: s.Canary.Profile.Version,
		ManagementAPI: s.CP.APIURL, CA: s.Certs.CA(), AnalyzerAPI: s.Analyzer.URL,
		ClickHouse: s.ClickHouse.Addr, Database: wire.Database,
		Metrics: map[string]string{
			"control":   s.CP.APIURL + "/metrics",
			"telemetry": "http://" + s.Telemetry.MetricsAddr + "/metrics",
			"analyzer":  s.Analyzer.URL + "/metrics",
			"envoy":     "http://" + s.Envoys[0].AdminAddr + "/stats/prometheus",
		},
		EnvoyAdmin: "http://" + s.Envoys[0].AdminAddr,
		Judge:      "http://" + s.Judge.Addr,
		Pools:      map[string]string{s.Stable.Profile.Version: "http://" + s.Stable.Addr, s.Canary.Profile.Version: "http://" + s.Canary.Addr},
		Token:      token, ForceKey: s.ForceKey, ForceKeysFile: filepath.Join(s.dir, "force-keys"),
		Env: map[string]string{
			"LLMCANARY_ANALYZER":  s.Analyzer.URL,
			"LLMCANARY_CA":        s.Certs.CA(),
			"LLMCANARY_API_TOKEN": token,
		},
		RolloutStart: fmt.Sprintf("llmcanary rollout start --model %s --canary %s", s.Model, s.Canary.Profile.Version),
	}
}

// writeStackInfo writes info to dir/stack.json and returns its path.
func writeStackInfo(dir string, info StackInfo) (string, error) {
	b, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "stack.json")
	return path, os.WriteFile(path, append(b, '\n'), 0o600)
}

// printStack tells a newcomer how to reach and drive the stack.
func printStack(w io.Writer, info StackInfo, stackFile string) {
	fmt.Fprintf(w, `llmcanary is up (Ctrl-C stops everything); every address is in %s

  gateway (OpenAI API)   %s/v1/chat/completions   model %q (%s stable, %s canary at 0 %%)
  management API         %s
  analyzer (rollouts)    %s
  API token              %s
  CA                     %s
  force key              %s   (x-llmcanary-key; pins a version with x-llmcanary-force)
  ClickHouse (native)    %s   database %s
  metrics                control %s
                         telemetry %s
                         analyzer %s
  Envoy admin            %s
  pools                  %s=%s  %s=%s  judge=%s

Send a request:
  curl -s %s/v1/chat/completions -H 'x-user-id: alice' \
       -d '{"model":%q,"messages":[{"role":"user","content":"hi"}]}'
Ask for the canary by name:
  curl -s %s/v1/chat/completions -H 'x-llmcanary-force: %s' -H 'x-llmcanary-key: %s' \
       -d '{"model":%q,"messages":[{"role":"user","content":"hi"}]}'
Start a rollout, then follow it (send traffic meanwhile, or it holds for lack of data):
  export LLMCANARY_ANALYZER=%s LLMCANARY_CA=%s LLMCANARY_API_TOKEN=%s
  %s
  llmcanary rollout list
`, stackFile,
		info.Gateway, info.Model, info.Stable, info.Canary,
		info.ManagementAPI, info.AnalyzerAPI, info.Token, info.CA, info.ForceKey,
		info.ClickHouse, info.Database, info.Metrics["control"], info.Metrics["telemetry"], info.Metrics["analyzer"],
		info.EnvoyAdmin, info.Stable, info.Pools[info.Stable], info.Canary, info.Pools[info.Canary], info.Judge,
		info.Gateway, info.Model,
		info.Gateway, info.Canary, info.ForceKey, info.Model,
		info.Env["LLMCANARY_ANALYZER"], info.Env["LLMCANARY_CA"], info.Env["LLMCANARY_API_TOKEN"],
		info.RolloutStart)
}

func (o upOptions) profiles() (stable, canary sim.Profile, err error) {
	if o.stable != nil && o.canary != nil {
		return *o.stable, *o.canary, nil
	}
	if stable, err = sim.LoadOrBuiltin(o.stableProfile); err != nil {
		return
	}
	canary, err = sim.LoadOrBuiltin(o.canaryProfile)
	return
}

func runUp(ctx context.Context, args []string) error {
	fs := newFlagSet("up", `Starts a complete local llmcanary on loopback and keeps it running until
Ctrl-C: ClickHouse, one Envoy with the wasm and ext_proc filters, the control
plane, the telemetry service, the analyzer, a stable and a canary simulated
pool, and a simulated judge. Envoy reaches the control plane and the
telemetry over mTLS with certificates from a CA it creates in --dir/tls
(llmcanary certs); the management and rollout APIs serve TLS. Prints how to
reach each part, the API token, the force key and a first rollout command,
and writes every address to --dir/stack.json for scripts.`)
	o := upOptions{}
	fs.StringVar(&o.dir, "dir", "llmcanary-local", "directory for state, logs and ClickHouse data")
	fs.StringVar(&o.stableProfile, "stable", "stable", "stable pool profile: a built-in name or a YAML file")
	fs.StringVar(&o.canaryProfile, "canary", "canary-healthy", "canary pool profile: canary-healthy, canary-regressed or a YAML file")
	fs.Float64Var(&o.canaryWeight, "canary-weight", 0, "initial canary weight in percent")
	fs.Float64Var(&o.capture, "capture", 0.2, "fraction of responses whose text is captured for the quality judge")
	if err := fs.Parse(args); err != nil {
		return err
	}
	o.log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s, err := startUp(ctx, o)
	if err != nil {
		return err
	}
	defer s.Stop()
	info := s.info()
	path, err := writeStackInfo(o.dir, info)
	if err != nil {
		return err
	}
	printStack(os.Stdout, info, path)
	<-ctx.Done()
	fmt.Println("\nstopping")
	return nil
}
