package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/llmcanary/llmcanary/analyzer/analyzersvc"
	"github.com/llmcanary/llmcanary/internal/config"
)

func init() {
	register(command{
		Name:    "analyzer",
		Summary: "run the analyzer: judge every rollout from ClickHouse and move traffic through the control plane",
		Run:     runAnalyzer,
	})
}

// bindAnalyzer registers the flags of `llmcanary analyzer`, bound to o.
func bindAnalyzer(fs *flag.FlagSet, o *analyzersvc.Options) {
	fs.StringVar(&o.Listen, "listen", o.Listen, "address of the rollout API")
	fs.StringVar(&o.DataDir, "data-dir", o.DataDir, "directory of the durable rollouts; a restart resumes every running rollout")
	fs.StringVar(&o.TokenFile, "token-file", o.TokenFile, "file holding the rollout API's bearer token (default: $LLMCANARY_API_TOKEN)")
	fs.StringVar(&o.ControlPlane, "control-plane", o.ControlPlane, "base URL of the control plane's management API; replicas: their URLs separated by commas")
	fs.StringVar(&o.ControlPlaneTokenFile, "control-plane-token-file", o.ControlPlaneTokenFile, "file holding the management API's token (default: the rollout API's token)")
	fs.StringVar(&o.ClickHouse, "clickhouse", o.ClickHouse, "ClickHouse native-protocol address (with a telemetry cluster: any of its servers)")
	fs.StringVar(&o.Database, "database", o.Database, "ClickHouse database of the telemetry")
	fs.DurationVar((*time.Duration)(&o.Interval), "interval", o.Interval.D(), "how often each running rollout is checked for new rows; a look decides as soon as evidence arrives")
	fs.DurationVar((*time.Duration)(&o.Refresh), "refresh", o.Refresh.D(), "the longest a running rollout goes without a look when no new rows arrive")
	fs.StringVar(&o.PolicyFile, "policy", o.PolicyFile, "YAML policy file (default: the built-in policy)")
	fs.StringVar(&o.JudgeEndpoint, "judge-endpoint", o.JudgeEndpoint, "OpenAI-compatible base URL of the judge model; empty: no judge (user feedback only)")
	fs.StringVar(&o.JudgeModel, "judge-model", o.JudgeModel, "model name of the judge")
	fs.StringVar(&o.JudgeAPIKeyEnv, "judge-api-key-env", o.JudgeAPIKeyEnv, "environment variable holding the judge's API key, if any")
	fs.DurationVar((*time.Duration)(&o.LookTimeout), "look-timeout", o.LookTimeout.D(), "bound of one look's queries; 0: --interval (a look reads its window at about 440 000 rows a second)")
	fs.DurationVar((*time.Duration)(&o.JudgeInterval), "judge-interval", o.JudgeInterval.D(), "pause between judge rounds when there is no backlog")
	fs.StringVar(&o.GatewayURL, "gateway-url", o.GatewayURL, "base URL of an Envoy of the fleet, where the leader sends the pre-flight stages' forced requests; empty: no pre-flight")
	fs.StringVar(&o.ForceKeyFile, "force-key-file", o.ForceKeyFile, "file holding a key of the wasm filter's force keys, sent with the pre-flight requests")
	fs.StringVar(&o.ControlPlaneCA, "control-plane-ca", o.ControlPlaneCA, "PEM CA certificate that verifies an https --control-plane (default: the system's roots)")
	fs.Var(&o.EtcdEndpoints, "etcd-endpoints", "etcd client URLs (comma-separated or repeated): keep the rollouts in etcd and elect one acting analyzer among those sharing --etcd-prefix (default: one analyzer on --data-dir)")
	fs.StringVar(&o.EtcdPrefix, "etcd-prefix", o.EtcdPrefix, "etcd key prefix of the group's rollouts and election")
	fs.DurationVar((*time.Duration)(&o.LeaderLease), "leader-lease", o.LeaderLease.D(), "lease of the leadership: a killed leader's successor acts within it (at least 2s)")
	fs.StringVar(&o.Member, "member", o.Member, "this analyzer's identity in the election (default: host name and --listen)")
	bindServerTLS(fs, &o.TLS, false, "--listen")
	o.Notify.Bind(fs)
}

func runAnalyzer(ctx context.Context, args []string) error {
	o := analyzersvc.Defaults()
	fs := newFlagSet("analyzer", `Looks at every running rollout each --interval: measures stable and canary
over the stage's window in ClickHouse, decides with always-valid sequential
tests (advance, promote, roll back, hold, pause for a human) and moves traffic
through the control plane. Serves the rollout API (HTTP/JSON, bearer token,
see analyzer/openapi.yaml) with POST /v1/feedback for user ratings, and
beside it /metrics (Prometheus), /healthz and /readyz (ready: ClickHouse
answers and the control plane takes the token). Webhooks (--notify-*) hear of
every decision and state change. Rollouts are durable in --data-dir; with
--etcd-endpoints they live in etcd, and the analyzers sharing --etcd-prefix
elect one leader that acts while the others serve reads and refuse writes
(503 not_leader, naming the leader) until they take over.`)
	if err := config.Parse(fs, args, func(fs *flag.FlagSet) { bindAnalyzer(fs, &o) }); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	var err error
	if o.Token, err = readToken(o.TokenFile); err != nil && o.TokenFile != "" {
		return err
	}
	if o.ForceKeyFile != "" {
		if o.ForceKey, err = firstKey(o.ForceKeyFile); err != nil {
			return fmt.Errorf("--force-key-file: %w", err)
		}
	}
	s, err := analyzersvc.Start(ctx, o)
	if err != nil {
		return err
	}
	return s.Err()
}
