//go:build integration

package chwriter

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/analyzer/chsource"
	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/internal/procs/chdbtest"
	"github.com/llmcanary/llmcanary/internal/procs/chtest"
	"github.com/llmcanary/llmcanary/internal/wire"
)

// These tests run the schema, its migration and the documented queries on
// a current ClickHouse engine (chDB, 26.x) beside the real 18.16 server.

func modernVersion(t testing.TB, conn *chdbtest.Conn) serverVersion {
	t.Helper()
	vs, err := conn.Version()
	if err != nil {
		t.Fatal(err)
	}
	v, err := parseVersion(vs)
	if err != nil {
		t.Fatal(err)
	}
	if !v.modern() {
		t.Fatalf("chDB reports ClickHouse %s, which the schema does not treat as modern", vs)
	}
	return v
}

// columnTypes reads each column's type and codec from system.columns.
func columnTypes(t *testing.T, conn driver.Conn, db, tbl string) map[string]string {
	t.Helper()
	rows, err := conn.Query(context.Background(), "SELECT name, type, compression_codec FROM system.columns WHERE database = ? AND table = ?", db, tbl)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var name, typ, codec string
		if err := rows.Scan(&name, &typ, &codec); err != nil {
			t.Fatal(err)
		}
		out[name] = strings.TrimSpace(typ + " " + codec)
	}
	return out
}

// insertRows writes recs with the table's own INSERT and column values.
func insertRows[R any](t testing.TB, conn driver.Conn, db string, tb table[R], recs []R) {
	t.Helper()
	b, err := conn.PrepareBatch(context.Background(), tb.insertSQL(db))
	if err != nil {
		t.Fatal(err)
	}
	for i := range recs {
		if tb.keep != nil && !tb.keep(&recs[i]) {
			continue
		}
		vals := make([]any, len(tb.cols))
		for k, c := range tb.cols {
			vals[k] = c.value(&recs[i])
		}
		if err := b.Append(vals...); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatalf("%s: %v", tb.name, err)
	}
}

func TestModernServerGetsLowCardinalityDateTime64CodecsAndTTL(t *testing.T) {
	conn := chdbtest.Start(t)
	modernVersion(t, conn)
	ctx := context.Background()
	for i := 0; i < 2; i++ { // the second run finds everything in place
		if err := Migrate(ctx, conn, "tel", 30); err != nil {
			t.Fatalf("migrate, run %d: %v", i+1, err)
		}
	}
	want := map[string]map[string]string{
		wire.TableRequests: {
			"ts": "DateTime64(3) CODEC(Delta(8), ZSTD(1))", "ts_ms": "UInt64 CODEC(Delta(8), ZSTD(1))", "date": "Date",
			"request_id": "String", "model": "LowCardinality(String)", "version": "LowCardinality(String)",
			"failure": "LowCardinality(String)", "finish_reason": "LowCardinality(String)", "category": "LowCardinality(String)",
			"ttft_ms": "Float64 CODEC(Gorilla(8), ZSTD(1))", "total_ms": "Float64 CODEC(Gorilla(8), ZSTD(1))", "bucket": "UInt64", "sample_rate": "Float64",
		},
		wire.TableCaptures: {"ts": "DateTime64(3) CODEC(Delta(8), ZSTD(1))", "model": "LowCardinality(String)", "prompt": "String"},
		wire.TableRequestLog: {
			"ts": "DateTime64(3) CODEC(Delta(8), ZSTD(1))", "version": "LowCardinality(String)", "response_flags": "LowCardinality(String)",
			"duration_ms": "Float64 CODEC(Gorilla(8), ZSTD(1))",
		},
	}
	for tbl, cols := range want {
		got := columnTypes(t, conn, "tel", tbl)
		for c, typ := range cols {
			if got[c] != typ {
				t.Errorf("%s.%s is %q, want %q", tbl, c, got[c], typ)
			}
		}
		var create string
		if err := conn.QueryRow(ctx, "SELECT create_table_query FROM system.tables WHERE database = 'tel' AND name = ?", tbl).Scan(&create); err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{"TTL date + toIntervalDay(30)", "ttl_only_drop_parts = 1"} {
			if !strings.Contains(create, s) {
				t.Errorf("%s has no %q: %s", tbl, s, create)
			}
		}
	}
}

func TestPortableSchemaStaysWithoutModernTypesOn1816(t *testing.T) {
	v18 := serverVersion{18, 16}
	for _, tb := range tables {
		sql := tb.createSQL("db", v18)
		for _, modern := range []string{"LowCardinality", "DateTime64", "CODEC", "TTL"} {
			if strings.Contains(sql, modern) {
				t.Errorf("the 18.16 DDL of %s uses %s:\n%s", tb.name, modern, sql)
			}
		}
	}
}

// An 18.16-style table (portable types, from a release without the later
// columns) on a server upgraded to a modern release: the migration adds
// the missing columns with modern types, keeps the existing ones and
// their rows, and the writer's INSERT works on the mixed table.
func TestMigrationUpgradesAn1816StyleTableOnAModernServer(t *testing.T) {
	conn := chdbtest.Start(t)
	modernVersion(t, conn)
	ctx := context.Background()
	db := "tel"
	old := table[extproc.Record]{name: requestsTable.name, cols: requestsTable.cols[:10]}
	for _, q := range []string{"CREATE DATABASE " + db, old.createSQL(db, serverVersion{18, 16})} {
		if err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	now := time.Now().UTC()
	insertRows(t, conn, db, old, []extproc.Record{{Time: now.Add(-time.Minute), RequestID: "from-18.16", Model: "llama", Version: "v0", Bucket: 7}})
	if err := Migrate(ctx, conn, db, 0); err != nil {
		t.Fatal(err)
	}
	got := columnTypes(t, conn, db, wire.TableRequests)
	for c, typ := range map[string]string{"ts": "DateTime", "model": "String", "failure": "LowCardinality(String)", "ttft_ms": "Float64 CODEC(Gorilla(8), ZSTD(1))", "sample_rate": "Float64"} {
		if got[c] != typ {
			t.Errorf("%s is %q after the migration, want %q", c, got[c], typ)
		}
	}
	insertRows(t, conn, db, requestsTable, []extproc.Record{{Time: now, RequestID: "new", Model: "llama", Version: "v1", Failure: "http_5xx", TTFTMs: 12.5, SampleRate: 0.5}})
	res, err := chdbtest.Values(ctx, conn, "SELECT request_id, version, failure, ttft_ms, sample_rate FROM tel.requests ORDER BY ts_ms")
	if err != nil {
		t.Fatal(err)
	}
	wantRows := "from-18.16 | v0 |  | 0 | 1\nnew | v1 | http_5xx | 12.5 | 0.5"
	var lines []string
	for _, r := range res.Rows {
		lines = append(lines, strings.Join(r, " | "))
	}
	if strings.Join(lines, "\n") != wantRows {
		t.Errorf("rows after the migration:\n%s\nwant\n%s", strings.Join(lines, "\n"), wantRows)
	}
}

// docSQL returns every SELECT of the ```sql blocks of the docs and the
// README: what a user copies.
func docSQL(t *testing.T) []string {
	t.Helper()
	block := regexp.MustCompile("(?s)```sql\n(.*?)```")
	var out []string
	for _, f := range []string{"../../README.md", "../../docs/telemetry.md", "../../docs/analyzer.md", "../../docs/operations.md", "../../docs/configuration.md", "../../deploy/README.md"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range block.FindAllStringSubmatch(string(b), -1) {
			for _, stmt := range strings.Split(m[1], ";") {
				if s := strings.TrimSpace(stmt); strings.HasPrefix(stripComments(s), "SELECT") {
					out = append(out, s)
				}
			}
		}
	}
	return out
}

func stripComments(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "--") {
			keep = append(keep, l)
		}
	}
	return strings.TrimSpace(strings.Join(keep, "\n"))
}

// The documented queries (the package's Query* constants and every SELECT
// the docs and README show) over the same rows on 18.16 and on a modern
// server, each with its own schema: every query runs on both and answers
// the same.
func TestDocumentedQueriesAnswerAlikeOn1816AndAModernServer(t *testing.T) {
	ch := chtest.Shared(t)
	old := chtest.Connect(t, ch)
	modern := chdbtest.Start(t)
	modernVersion(t, modern)
	ctx := context.Background()
	db := wire.Database // the documented queries name it
	now := time.Now()
	recs, logs := queryFixture(now), logFixture(now)
	// The shared server's other tests read these tables after this one.
	t.Cleanup(func() {
		for _, q := range []string{"TRUNCATE TABLE " + db + "." + wire.TableRequests, "TRUNCATE TABLE " + db + "." + wire.TableRequestLog, "DROP TABLE " + db + "." + chsource.StagesTable} {
			if err := old.Exec(ctx, q); err != nil {
				t.Error(err)
			}
		}
	})
	for _, conn := range []driver.Conn{old, modern} {
		if err := Migrate(ctx, conn, db, 0); err != nil {
			t.Fatal(err)
		}
		for _, q := range []string{"TRUNCATE TABLE " + db + "." + wire.TableRequests, "TRUNCATE TABLE " + db + "." + wire.TableRequestLog, chsource.CreateStagesSQL(db)} {
			if err := conn.Exec(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
		insertRows(t, conn, db, requestsTable, recs)
		insertRows(t, conn, db, requestLogTable, logs)
		stages, err := chsource.NewStageLog(ctx, conn, db)
		if err != nil {
			t.Fatal(err)
		}
		for i, w := range []time.Duration{90 * time.Minute, 30 * time.Minute} {
			if err := stages.RecordStage(ctx, stageWindow(i, now.Add(-w))); err != nil {
				t.Fatal(err)
			}
		}
	}
	queries := docSQL(t)
	for _, q := range docQueries {
		queries = append(queries, q)
	}
	queries = append(queries, chsource.QueryErrorRateByStage)
	for _, q := range queries {
		name := strings.SplitN(stripComments(q), "\n", 2)[0]
		t.Run(name, func(t *testing.T) {
			n, err := chdbtest.Compare(ctx, old, modern, q)
			if err != nil {
				t.Fatal(err)
			}
			// The partition listing of the docs names a day without rows.
			if n == 0 && !strings.Contains(q, "system.") {
				t.Fatalf("no rows on 18.16, so nothing is compared:\n%s", q)
			}
		})
	}
	if len(queries) < 8 {
		t.Errorf("only %d documented queries found", len(queries))
	}
}

// stageWindow is stage i of a rollout of the fixtures' model, started at
// from and still open.
func stageWindow(i int, from time.Time) analyzer.StageWindow {
	return analyzer.StageWindow{RolloutID: "r1", Model: "m", Stable: "v1", Canary: "v2", Stage: i, Weight: float64(i+1) * 10,
		Started: from, Updated: from}
}

// The writer's own statements besides the INSERTs: the replay's lookup of
// ids already stored, and retention by dropping old daily partitions.
func TestReplayLookupAndPartitionDropRunOnAModernServer(t *testing.T) {
	conn := chdbtest.Start(t)
	modernVersion(t, conn)
	ctx := context.Background()
	db := "tel"
	if err := Migrate(ctx, conn, db, 0); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	recs := []extproc.Record{
		{Time: now.Add(-72 * time.Hour), RequestID: "three-days-old", Model: "m", Version: "v1"},
		{Time: now.Add(-time.Minute), RequestID: "stored", Model: "m", Version: "v1"},
	}
	insertRows(t, conn, db, requestsTable, recs)
	p := &pipe[extproc.Record]{w: &Writer{o: Options{Database: db}}, sh: &shard{conn: conn, lay: layout{db: db}}, kind: requestRows}
	replayed := append(recs[1:], extproc.Record{Time: now, RequestID: "new", Model: "m", Version: "v1"})
	have, err := p.existingIDs(ctx, wire.TableRequests, replayed)
	if err != nil {
		t.Fatal(err)
	}
	if len(have) != 1 || !have["stored"] {
		t.Errorf("ids already stored: %v, want only the one stored", have)
	}
	n, err := dropPartitionsBefore(ctx, conn, layout{db: db}, now.Add(-24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	res, err := chdbtest.Values(ctx, conn, "SELECT request_id FROM tel.requests")
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 || len(res.Rows) != 1 || res.Rows[0][0] != "stored" {
		t.Errorf("dropped %d partitions, left %v: want the old day's partition gone and the recent row kept", n, res.Rows)
	}
}

// BenchmarkModernSchemaStorage measures what a requests row costs on disk
// with the portable (18.16) schema and with the modern one, on the same
// engine (chDB) and the same 200 000 rows of gateway-like traffic: two
// models, four versions, lognormal latencies, rare failures, random
// request ids, a row every 5 ms on average. Run: go test -tags integration
// -run '^$' -bench ModernSchemaStorage -benchtime 1x ./extproc/chwriter/
func BenchmarkModernSchemaStorage(b *testing.B) {
	conn := chdbtest.Start(b)
	ctx := context.Background()
	v := modernVersion(b, conn)
	rnd := rand.New(rand.NewPCG(3, 5))
	base := time.Now().UTC().Add(-20 * time.Minute)
	const n = 200_000
	recs := make([]extproc.Record, n)
	at := base
	for i := range recs {
		at = at.Add(time.Duration(1+rnd.IntN(9)) * time.Millisecond)
		m := rnd.IntN(2)
		r := extproc.Record{Time: at, RequestID: fmt.Sprintf("%016x%016x", rnd.Uint64(), rnd.Uint64()), Model: []string{"llama-3-8b", "mistral-7b"}[m],
			Version: []string{"v1", "v2-ft", "v7", "v8-rc"}[2*m+rnd.IntN(2)], Path: "/v1/chat/completions", Bucket: rnd.Uint64(),
			Streamed: rnd.IntN(5) > 0, Status: 200, PromptTokens: uint32(20 + rnd.IntN(400)), CompletionTokens: uint32(1 + rnd.IntN(500)),
			TokensFromUsage: true, FinishReason: "stop", SampleRate: 1}
		r.Cluster = r.Model + "_" + r.Version
		r.TTFTMs = math.Exp(4 + 0.5*rnd.NormFloat64())
		r.ITLMeanMs = math.Exp(2.5 + 0.3*rnd.NormFloat64())
		r.ITLP50Ms, r.ITLP95Ms, r.ITLMaxMs = r.ITLMeanMs*0.9, r.ITLMeanMs*2, r.ITLMeanMs*4
		r.TotalMs = r.TTFTMs + float64(r.CompletionTokens)*r.ITLMeanMs
		r.CostUSD = 2e-7 * float64(r.PromptTokens+r.CompletionTokens)
		r.Chunks, r.ResponseBytes = r.CompletionTokens, 60*r.CompletionTokens
		if rnd.IntN(100) == 0 {
			r.Status, r.Failure = 503, extproc.FailureHTTP5xx
		}
		recs[i] = r
	}
	bytesPerRow := map[string]float64{}
	for _, s := range []struct {
		db string
		v  serverVersion
	}{{"portable", serverVersion{18, 16}}, {"modern", v}} {
		for _, q := range []string{"CREATE DATABASE " + s.db, requestsTable.createSQL(s.db, s.v)} {
			if err := conn.Exec(ctx, q); err != nil {
				b.Fatal(err)
			}
		}
		for i := 0; i < n; i += 20_000 {
			insertRows(b, conn, s.db, requestsTable, recs[i:i+20_000])
		}
		if err := conn.Exec(ctx, "OPTIMIZE TABLE "+s.db+".requests FINAL"); err != nil {
			b.Fatal(err)
		}
		var bytes uint64
		if err := conn.QueryRow(ctx, "SELECT sum(data_compressed_bytes) FROM system.parts WHERE database = ? AND table = 'requests' AND active", s.db).Scan(&bytes); err != nil {
			b.Fatal(err)
		}
		bytesPerRow[s.db] = float64(bytes) / n
		res, err := chdbtest.Values(ctx, conn, "SELECT name, data_compressed_bytes FROM system.columns WHERE database = ? AND table = 'requests' AND name IN ('ts', 'ts_ms', 'model', 'version', 'cluster', 'failure', 'ttft_ms', 'total_ms') ORDER BY name", s.db)
		if err != nil {
			b.Fatal(err)
		}
		b.Logf("%s schema: %.1f bytes per row; compressed bytes of some columns: %v", s.db, bytesPerRow[s.db], res.Rows)
	}
	b.ReportMetric(bytesPerRow["portable"], "portable-B/row")
	b.ReportMetric(bytesPerRow["modern"], "modern-B/row")
	b.ReportMetric(bytesPerRow["modern"]/bytesPerRow["portable"], "modern/portable")
}
