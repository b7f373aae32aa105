package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/llmcanary/llmcanary/extproc/extprocsvc"
	"github.com/llmcanary/llmcanary/internal/config"
)

func init() {
	register(command{
		Name:    "extproc",
		Summary: "run the ext_proc telemetry service Envoy streams every request to",
		Run:     runExtproc,
	})
}

// bindExtproc registers the flags of `llmcanary extproc`, bound to o.
func bindExtproc(fs *flag.FlagSet, o *extprocsvc.Options) {
	fs.StringVar(&o.Listen, "listen", o.Listen, "gRPC address for Envoy's ext_proc filter")
	fs.StringVar(&o.MetricsListen, "metrics-listen", o.MetricsListen, "address serving Prometheus /metrics, /healthz and /readyz (empty: off)")
	fs.StringVar(&o.ClickHouse, "clickhouse", o.ClickHouse, "ClickHouse native-protocol address, e.g. 127.0.0.1:9000 (empty: log records instead)")
	fs.StringVar(&o.ClickHouseCluster, "clickhouse-cluster", o.ClickHouseCluster, "shard the telemetry over this ClickHouse cluster (its name in the servers' remote_servers config)")
	fs.Var(&config.Strings{P: &o.ClickHouseShards}, "clickhouse-shards", "`host:port` of each shard of --clickhouse-cluster, in remote_servers order (comma-separated or repeated)")
	fs.StringVar(&o.ClickHouseReplicaPath, "clickhouse-replica-path", o.ClickHouseReplicaPath, "ReplicatedMergeTree coordinator `path`, e.g. /clickhouse/tables/{shard}/llmcanary (servers need ZooKeeper or Keeper; empty: MergeTree)")
	fs.StringVar(&o.Database, "database", o.Database, "ClickHouse database (default llmcanary)")
	fs.StringVar(&o.SpoolDir, "spool-dir", o.SpoolDir, "directory where records wait while ClickHouse is unreachable")
	fs.IntVar(&o.RetentionDays, "retention-days", o.RetentionDays, "days of telemetry kept in ClickHouse (0: all)")
	fs.Float64Var(&o.CaptureRate, "capture-rate", o.CaptureRate, "fraction of requests whose prompt and completion are kept, redacted (0: off)")
	fs.IntVar(&o.CaptureMax, "capture-max-bytes", o.CaptureMax, "bytes kept of each captured prompt and completion")
	fs.Var(&config.Strings{P: &o.Refusals}, "refusal-pattern", "`regexp` marking a refusal (repeatable; replaces the defaults)")
	fs.DurationVar((*time.Duration)(&o.DrainTimeout), "drain-timeout", o.DrainTimeout.D(), "on SIGTERM, how long open streams may still run before they are cut (each still gets its row)")
	fs.BoolVar(&o.ReusePort, "reuse-port", o.ReusePort, "listen with SO_REUSEPORT so a second replica can share --listen (rolling restarts)")
	fs.StringVar(&o.LogLevel, "log-level", o.LogLevel, "debug, info, warn or error")
	bindServerTLS(fs, &o.TLS, true, "--listen")
}

func runExtproc(ctx context.Context, args []string) error {
	fs := newFlagSet("extproc", "Receives every request Envoy proxies (ext_proc, observability mode), times the streamed "+
		"tokens and writes one row per request to ClickHouse. Envoy never waits for it.")
	o := extprocsvc.Defaults()
	if err := config.Parse(fs, args, func(fs *flag.FlagSet) { bindExtproc(fs, &o) }); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	s, err := extprocsvc.Start(ctx, o)
	if err != nil {
		return err
	}
	return s.Err()
}
