package chwriter

import (
	"context"
	"fmt"
	"strings"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// LocalSuffix ends the name of a shard's local table in a cluster: rows of
// wire.TableRequests live in requests_local on every shard, and the
// Distributed table over them takes the name readers already use
// (requests), so every query reads the whole cluster unchanged.
const LocalSuffix = "_local"

// ShardingKey is the Distributed tables' sharding expression: the user's
// bucket, so one user's rows stay together on one shard. ShardOf computes
// the same shard in the writer. The captures table has no bucket column:
// its Distributed table is for reading only, and the writer puts a
// capture on the shard of its request.
const ShardingKey = "bucket"

// ShardOf is the index (0-based, in remote_servers order) of the shard
// that holds the rows of bucket in a cluster of n shards of weight 1. It
// is what a Distributed table with ShardingKey chooses: the key modulo
// the sum of the weights picks a slot, and with weight 1 slot i is shard i.
func ShardOf(bucket uint64, n int) int {
	if n <= 1 {
		return 0
	}
	return int(bucket % uint64(n))
}

// layout says where the writer's tables live on one server: a lone
// server's tables, or one shard's local tables and the Distributed tables
// over the cluster.
type layout struct {
	db            string
	cluster       string // "" for a lone server
	shards        int
	replicaPath   string // "" for MergeTree; else the ReplicatedMergeTree path prefix
	retentionDays int
}

// local is the name of table name's rows on this server.
func (l layout) local(name string) string {
	if l.cluster == "" {
		return name
	}
	return name + LocalSuffix
}

// engine is the engine of the local table named local.
func (l layout) engine(local string) string {
	if l.replicaPath == "" {
		return "MergeTree"
	}
	return fmt.Sprintf("ReplicatedMergeTree('%s/%s', '{replica}')", strings.TrimRight(l.replicaPath, "/"), local)
}

// distributedSQL creates t's Distributed table over the local tables of
// every shard, with the local table's columns; on is "" or " ON CLUSTER
// name".
func (l layout) distributedSQL(t tableDef, on string) string {
	key := ""
	for _, c := range t.cols {
		if c.name == ShardingKey {
			key = ", " + ShardingKey
		}
	}
	return fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s.%s%s AS %s.%s\nENGINE = Distributed(%s, %s, %s%s)",
		l.db, t.name, on, l.db, l.local(t.name), l.cluster, l.db, l.local(t.name), key)
}

// checkCluster makes sure the server's remote_servers config has the
// cluster with the writer's number of shards, each of weight 1, so that
// ShardOf places rows where the Distributed tables would.
func checkCluster(ctx context.Context, conn driver.Conn, l layout) error {
	var shards, weighted uint64
	err := conn.QueryRow(ctx,
		"SELECT uniqExact(shard_num), countIf(shard_weight != 1) FROM system.clusters WHERE cluster = ?", l.cluster).
		Scan(&shards, &weighted)
	switch {
	case err != nil:
		return fmt.Errorf("read cluster %s from system.clusters: %w", l.cluster, err)
	case shards == 0:
		return fmt.Errorf("cluster %s is not in the server's remote_servers config", l.cluster)
	case int(shards) != l.shards:
		return fmt.Errorf("cluster %s has %d shards in the server's remote_servers config, the writer was given %d addresses", l.cluster, shards, l.shards)
	case weighted > 0:
		return fmt.Errorf("cluster %s has shards of weight other than 1: the writer places rows by bucket modulo the shard count", l.cluster)
	}
	return nil
}

// onClusterDDL reports whether the server runs ON CLUSTER DDL: it needs a
// coordinator (ZooKeeper or ClickHouse Keeper) for its task queue, and
// ADD COLUMN IF NOT EXISTS (20.1 has it) to apply a migration to every
// host whatever each already has. Otherwise each shard's writer creates
// and migrates the tables of its own server.
func onClusterDDL(ctx context.Context, conn driver.Conn, v serverVersion) bool {
	if !v.atLeast(20, 1) {
		return false
	}
	var n uint64
	return conn.QueryRow(ctx, "SELECT count() FROM system.zookeeper WHERE path = '/'").Scan(&n) == nil
}

// adoptLoneTable renames a lone server's table to the local name a shard
// uses, when the server was the single telemetry server before it became
// a shard: its rows stay where they are and the Distributed table reads
// them.
func adoptLoneTable(ctx context.Context, conn driver.Conn, l layout, name string) error {
	engines := map[string]string{}
	rows, err := conn.Query(ctx, "SELECT name, engine FROM system.tables WHERE database = ? AND name IN (?, ?)", l.db, name, l.local(name))
	if err != nil {
		return fmt.Errorf("list tables of %s: %w", l.db, err)
	}
	for rows.Next() {
		var n, e string
		if err := rows.Scan(&n, &e); err != nil {
			rows.Close()
			return fmt.Errorf("list tables of %s: %w", l.db, err)
		}
		engines[n] = e
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list tables of %s: %w", l.db, err)
	}
	e, ok := engines[name]
	if !ok || e == "Distributed" {
		return nil
	}
	if _, ok := engines[l.local(name)]; ok {
		return fmt.Errorf("%s.%s is a %s table and %s.%s exists too: move its rows into %[4]s.%[5]s and drop it, then start again",
			l.db, name, e, l.db, l.local(name))
	}
	if err := conn.Exec(ctx, fmt.Sprintf("RENAME TABLE %s.%s TO %s.%s", l.db, name, l.db, l.local(name))); err != nil {
		return fmt.Errorf("rename lone table %s.%s to %s: %w", l.db, name, l.local(name), err)
	}
	return nil
}

// exists reports whether this server has the database (what "database")
// or the table db.name (what "table").
func exists(ctx context.Context, conn driver.Conn, what, db, name string) (bool, error) {
	q, args := "SELECT count() FROM system.tables WHERE database = ? AND name = ?", []any{db, name}
	if what == "database" {
		q, args = "SELECT count() FROM system.databases WHERE name = ?", []any{db}
	}
	var n uint64
	if err := conn.QueryRow(ctx, q, args...).Scan(&n); err != nil {
		return false, fmt.Errorf("look up %s %s: %w", what, name, err)
	}
	return n > 0, nil
}
