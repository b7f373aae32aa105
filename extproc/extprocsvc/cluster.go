package extprocsvc

import (
	"errors"
	"fmt"
	"net"
	"strings"
)

// shards returns the cluster's shard addresses, each flag value split at
// commas.
func (o Options) shards() []string {
	var out []string
	for _, v := range o.ClickHouseShards {
		for _, a := range strings.Split(v, ",") {
			if a = strings.TrimSpace(a); a != "" {
				out = append(out, a)
			}
		}
	}
	return out
}

// validateCluster checks the cluster flags: a lone server or a cluster,
// never both, and a cluster with its shards.
func (o Options) validateCluster() []error {
	var errs []error
	shards := o.shards()
	switch {
	case o.ClickHouseCluster == "" && len(shards) > 0:
		errs = append(errs, errors.New("--clickhouse-shards needs --clickhouse-cluster"))
	case o.ClickHouseCluster == "" && o.ClickHouseReplicaPath != "" && o.ClickHouse == "":
		errs = append(errs, errors.New("--clickhouse-replica-path needs --clickhouse or --clickhouse-cluster"))
	case o.ClickHouseCluster == "":
	case o.ClickHouse != "":
		errs = append(errs, errors.New("--clickhouse and --clickhouse-cluster exclude each other: give a cluster's servers with --clickhouse-shards"))
	case len(shards) == 0:
		errs = append(errs, fmt.Errorf("--clickhouse-cluster %s needs --clickhouse-shards, one address per shard", o.ClickHouseCluster))
	case o.SpoolDir == "":
		errs = append(errs, errors.New("--spool-dir is required with --clickhouse-cluster"))
	}
	for _, a := range shards {
		if _, _, err := net.SplitHostPort(a); err != nil {
			errs = append(errs, fmt.Errorf("--clickhouse-shards %q: %w", a, err))
		}
	}
	return errs
}
