package chwriter

import (
	"strings"
	"testing"
)

func TestShardOfSpreadsBucketsModuloTheShardCount(t *testing.T) {
	for _, tc := range []struct {
		bucket uint64
		n, is  int
	}{
		{0, 2, 0}, {1, 2, 1}, {7, 3, 1}, {^uint64(0), 2, 1}, {1 << 63, 3, 2}, {12345, 1, 0}, {12345, 0, 0},
	} {
		if got := ShardOf(tc.bucket, tc.n); got != tc.is {
			t.Errorf("ShardOf(%d, %d) = %d, want %d", tc.bucket, tc.n, got, tc.is)
		}
	}
}

func TestClusterOptionsAreValidated(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		want string // "" valid
	}{
		{"lone server", Options{Addr: "127.0.0.1:9000", SpoolDir: "s"}, ""},
		{"cluster", Options{Cluster: "c1", Shards: []string{"a:9000", "b:9000"}, SpoolDir: "s"}, ""},
		{"cluster without shards", Options{Cluster: "c1", SpoolDir: "s"}, "needs its shards"},
		{"shards without cluster", Options{Addr: "a:1", Shards: []string{"a:9000"}, SpoolDir: "s"}, "need a Cluster"},
		{"cluster and addr", Options{Cluster: "c1", Addr: "a:1", Shards: []string{"a:9000"}, SpoolDir: "s"}, "not Addr"},
		{"bad cluster name", Options{Cluster: "c-1; DROP", Shards: []string{"a:9000"}, SpoolDir: "s"}, "plain identifier"},
		{"shard without port", Options{Cluster: "c1", Shards: []string{"a"}, SpoolDir: "s"}, "shard 1 address"},
		{"relative replica path", Options{Addr: "a:1", ReplicaPath: "tables", SpoolDir: "s"}, "must start with /"},
		{"quoted replica path", Options{Addr: "a:1", ReplicaPath: "/t'x", SpoolDir: "s"}, "no quote"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.o.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Validate: %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

func TestClusterTablesAreLocalMergeTreeUnderADistributedTable(t *testing.T) {
	l := layout{db: "llmcanary", cluster: "tel", shards: 2}
	if got := l.local("requests"); got != "requests_local" {
		t.Fatalf("local name %q", got)
	}
	if got := (layout{db: "llmcanary"}).local("requests"); got != "requests" {
		t.Fatalf("a lone server's table is renamed: %q", got)
	}
	if got := l.engine("requests_local"); got != "MergeTree" {
		t.Fatalf("engine without a coordinator: %q", got)
	}
	l.replicaPath = "/clickhouse/tables/{shard}/llmcanary/"
	if got, want := l.engine("requests_local"), "ReplicatedMergeTree('/clickhouse/tables/{shard}/llmcanary/requests_local', '{replica}')"; got != want {
		t.Fatalf("replicated engine %q, want %q", got, want)
	}
	for _, tc := range []struct {
		t    tableDef
		on   string
		want string
	}{
		{requestsTable.def(), "", "CREATE TABLE IF NOT EXISTS llmcanary.requests AS llmcanary.requests_local\nENGINE = Distributed(tel, llmcanary, requests_local, bucket)"},
		{requestLogTable.def(), " ON CLUSTER tel", "CREATE TABLE IF NOT EXISTS llmcanary.request_log ON CLUSTER tel AS llmcanary.request_log_local\nENGINE = Distributed(tel, llmcanary, request_log_local, bucket)"},
		// captures carry no bucket: read-only Distributed table, rows
		// written to the shard of their request.
		{capturesTable.def(), "", "CREATE TABLE IF NOT EXISTS llmcanary.captures AS llmcanary.captures_local\nENGINE = Distributed(tel, llmcanary, captures_local)"},
	} {
		if got := l.distributedSQL(tc.t, tc.on); got != tc.want {
			t.Errorf("distributed DDL\n got %s\nwant %s", got, tc.want)
		}
	}
}
