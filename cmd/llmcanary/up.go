package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/llmcanary/llmcanary/internal/local"
	"github.com/llmcanary/llmcanary/sim"
	"github.com/llmcanary/llmcanary/xds"
)

func init() {
	register(command{
		Name:    "up",
		Summary: "run a whole local stack: ClickHouse, Envoy, control plane, telemetry and two simulated versions",
		Run:     runUp,
	})
}

// upStack is what `up` and `demo` start: a model served by a stable and a
// canary pool behind one Envoy with both filters, telemetry into ClickHouse.
type upStack struct {
	*local.Local
	Stable, Canary *local.SimServer
	Judge          *local.SimServer
	Model          string
}

type upOptions struct {
	dir           string
	stableProfile string
	canaryProfile string
	// stable and canary, when set, are used instead of the named profiles.
	stable, canary *sim.Profile
	canaryWeight   float64
	capture        float64
	log            *slog.Logger
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
		if err := os.WriteFile(keys, []byte("local-operator-key\n"), 0o600); err != nil {
			return nil, err
		}
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
	s := &upStack{Local: l, Model: stable.Model}
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
	if err != nil {
		l.Stop()
		return nil, err
	}
	return s, nil
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
plane, the telemetry service, a stable and a canary simulated pool, and a
simulated judge. Envoy reaches the control plane and the telemetry over mTLS
with certificates from a CA it creates in --dir/tls (llmcanary certs); the
management API serves TLS. Prints how to reach each part.`)
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
	fmt.Printf(`llmcanary is up (Ctrl-C stops everything)

  gateway (OpenAI API)   http://%s/v1/chat/completions   model %q
  management API         %s   token %s   CA %s
  xDS, telemetry         mTLS: Envoy's client certificate and the services' certificates in %s
  ClickHouse (native)    %s   database llmcanary
  telemetry metrics      http://%s/metrics
  Envoy admin            http://%s
  pools                  %s=%s  %s=%s  judge=%s

  curl -s http://%s/v1/chat/completions -H 'x-user-id: alice' \
       -d '{"model":%q,"messages":[{"role":"user","content":"hi"}]}'
  LLMCANARY_CA=%s LLMCANARY_API_TOKEN=%s llmcanary weights --api %s --model %s ...
`, s.Gateway[0], s.Model, s.CP.APIURL, local.DevToken, s.Certs.CA(), s.Certs, s.ClickHouse.Addr, s.Telemetry.MetricsAddr,
		s.Envoys[0].AdminAddr, s.Stable.Profile.Version, s.Stable.Addr, s.Canary.Profile.Version, s.Canary.Addr, s.Judge.Addr,
		s.Gateway[0], s.Model, s.Certs.CA(), local.DevToken, s.CP.APIURL, s.Model)
	<-ctx.Done()
	fmt.Println("\nstopping")
	return nil
}
