// Package chwritertest writes telemetry rows for the tests of the packages
// that read them (the analyzer's ClickHouse source and quality store), with
// the real writer, so they read exactly what production writes.
package chwritertest

import (
	"context"
	"testing"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/extproc/chwriter"
	"github.com/llmcanary/llmcanary/internal/procs"
)

// WriteRecords stores recs in database db and returns once every one is
// inserted.
func WriteRecords(tb testing.TB, ch *procs.ClickHouse, db string, recs []extproc.Record) {
	tb.Helper()
	writeRecords(tb, chwriter.Options{Addr: ch.Addr, Database: db}, recs)
}

// WriteRecordsToCluster stores recs in database db of the cluster named
// cluster whose shards are servers, in order, each row on the shard of
// its bucket, and returns once every one is inserted.
func WriteRecordsToCluster(tb testing.TB, servers []*procs.ClickHouse, cluster, db string, recs []extproc.Record) {
	tb.Helper()
	o := chwriter.Options{Cluster: cluster, Database: db}
	for _, s := range servers {
		o.Shards = append(o.Shards, s.Addr)
	}
	writeRecords(tb, o, recs)
}

func writeRecords(tb testing.TB, o chwriter.Options, recs []extproc.Record) {
	tb.Helper()
	o.SpoolDir, o.BatchSize, o.QueueSize = tb.TempDir(), 5000, len(recs)+1
	w, err := chwriter.New(context.Background(), o)
	if err != nil {
		tb.Fatal(err)
	}
	for _, r := range recs {
		w.Write(r)
	}
	if err := w.Close(context.Background()); err != nil {
		tb.Fatal(err)
	}
	if st := w.Stats(); st.Written != uint64(len(recs)) {
		tb.Fatalf("writer stats %+v, want %d rows written", st, len(recs))
	}
}

// WriteLog stores access-log entries in database db's request log and
// returns once every one is inserted.
func WriteLog(tb testing.TB, ch *procs.ClickHouse, db string, entries []extproc.LogEntry) {
	tb.Helper()
	w, err := chwriter.New(context.Background(), chwriter.Options{
		Addr: ch.Addr, Database: db, SpoolDir: tb.TempDir(),
		BatchSize: 5000, QueueSize: len(entries) + 1,
	})
	if err != nil {
		tb.Fatal(err)
	}
	for _, e := range entries {
		w.WriteLog(e)
	}
	if err := w.Close(context.Background()); err != nil {
		tb.Fatal(err)
	}
	if st := w.LogStats(); st.Written != uint64(len(entries)) {
		tb.Fatalf("request log stats %+v, want %d rows written", st, len(entries))
	}
}
