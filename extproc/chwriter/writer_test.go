//go:build integration

package chwriter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/internal/procs"
	"github.com/llmcanary/llmcanary/internal/procs/chtest"
	"github.com/llmcanary/llmcanary/internal/wire"
)

func newWriter(t *testing.T, o Options) *Writer {
	t.Helper()
	if o.SpoolDir == "" {
		o.SpoolDir = t.TempDir()
	}
	if o.FlushInterval == 0 {
		o.FlushInterval = 50 * time.Millisecond
	}
	if o.RetryMin == 0 {
		o.RetryMin, o.RetryMax = 50*time.Millisecond, 500*time.Millisecond
	}
	w, err := New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func closeWriter(t *testing.T, w *Writer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// scanRow reads one row of cols into values of the column's own types.
func scanRow(t *testing.T, rows interface{ Scan(...any) error }, n int, types []reflect.Type) []any {
	t.Helper()
	ptrs := make([]any, n)
	for i := range ptrs {
		ptrs[i] = reflect.New(types[i]).Interface()
	}
	if err := rows.Scan(ptrs...); err != nil {
		t.Fatal(err)
	}
	out := make([]any, n)
	for i, p := range ptrs {
		out[i] = reflect.ValueOf(p).Elem().Interface()
	}
	return out
}

// assertTableHolds checks that tbl holds exactly want, once each, with
// every column equal to what the schema derives from the row.
func assertTableHolds[R any](t *testing.T, w *Writer, tb table[R], want []R) {
	t.Helper()
	ctx := context.Background()
	names := make([]string, len(tb.cols))
	idCol := -1
	for i, c := range tb.cols {
		names[i] = c.name
		if c.name == "request_id" {
			idCol = i
		}
	}
	rows, err := w.conn.Query(ctx, fmt.Sprintf("SELECT %s FROM %s.%s", strings.Join(names, ", "), w.o.Database, tb.name))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var types []reflect.Type
	for _, ct := range rows.ColumnTypes() {
		types = append(types, ct.ScanType())
	}
	byID := map[string]R{}
	for _, r := range want {
		byID[tb.cols[idCol].value(&r).(string)] = r
	}
	seen := map[string]bool{}
	for rows.Next() {
		got := scanRow(t, rows, len(names), types)
		id := got[idCol].(string)
		if seen[id] {
			t.Fatalf("%s: request %s stored twice", tb.name, id)
		}
		seen[id] = true
		r, ok := byID[id]
		if !ok {
			t.Fatalf("%s: unexpected request %s", tb.name, id)
		}
		for i, c := range tb.cols {
			exp := c.value(&r)
			if et, ok := exp.(time.Time); ok {
				if c.typ == "DateTime" {
					et = et.Truncate(time.Second)
				}
				if gt, ok := got[i].(time.Time); !ok || !gt.Equal(et) {
					t.Fatalf("%s: request %s column %s = %v, want %v", tb.name, id, c.name, got[i], et)
				}
				continue
			}
			if !reflect.DeepEqual(got[i], exp) {
				t.Fatalf("%s: request %s column %s = %#v, want %#v", tb.name, id, c.name, got[i], exp)
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(seen) != len(want) {
		t.Fatalf("%s holds %d rows, want %d", tb.name, len(seen), len(want))
	}
}

func captured(rs []extproc.Record) []extproc.Record {
	var out []extproc.Record
	for _, r := range rs {
		if r.Captured {
			out = append(out, r)
		}
	}
	return out
}

func TestWriterStoresEachRecordOnceWithEveryColumn(t *testing.T) {
	ch := chtest.Shared(t)
	reg := prometheus.NewRegistry()
	w := newWriter(t, Options{Addr: ch.Addr, Database: chtest.NewDatabase(), BatchSize: 97, Registerer: reg})
	recs := makeRecords(1000, time.Now().Add(-time.Hour))
	for _, r := range recs {
		w.Write(r)
	}
	closeWriter(t, w)
	st := w.Stats()
	if st.Written != 1000 || st.Spooled != 0 || st.Dropped != 0 {
		t.Fatalf("stats %+v, want 1000 written, none spooled or dropped", st)
	}

	w2 := newWriter(t, Options{Addr: ch.Addr, Database: w.o.Database})
	defer closeWriter(t, w2)
	assertTableHolds(t, w2, requestsTable, recs)
	assertTableHolds(t, w2, capturesTable, captured(recs))
}

func TestWriterStoresEachAccessLogEntryOnceWithEveryColumn(t *testing.T) {
	ch := chtest.Shared(t)
	reg := prometheus.NewRegistry()
	dir := t.TempDir()
	w := newWriter(t, Options{Addr: ch.Addr, Database: chtest.NewDatabase(), BatchSize: 89, SpoolDir: dir, Registerer: reg})
	entries := makeLogEntries(1000, time.Now().Add(-time.Hour))
	recs := makeRecords(10, time.Now())
	for i, e := range entries {
		w.WriteLog(e)
		if i < len(recs) {
			w.Write(recs[i])
		}
	}
	closeWriter(t, w)
	if st := w.LogStats(); st.Written != 1000 || st.Spooled != 0 || st.Dropped != 0 {
		t.Fatalf("log stats %+v, want 1000 written, none spooled or dropped", st)
	}
	if st := w.Stats(); st.Written != 10 {
		t.Fatalf("request stats %+v, want the 10 records alone", st)
	}
	if _, err := os.Stat(filepath.Join(dir, requestLogRows.subdir, spoolLogName)); err != nil {
		t.Fatalf("the access log's spool: %v", err)
	}

	w2 := newWriter(t, Options{Addr: ch.Addr, Database: w.o.Database})
	defer closeWriter(t, w2)
	assertTableHolds(t, w2, requestLogTable, entries)
	assertTableHolds(t, w2, requestsTable, recs)
}

func TestWriterSurvivesClickHouseKilledMidStream(t *testing.T) {
	ch := chtest.Own(t)
	db := chtest.NewDatabase()
	w := newWriter(t, Options{Addr: ch.Addr, Database: db, BatchSize: 50, QueueSize: 10000})
	recs := makeRecords(3000, time.Now())
	entries := makeLogEntries(3000, time.Now())
	write := func(lo, hi int) {
		for i := lo; i < hi; i++ {
			w.Write(recs[i])
			w.WriteLog(entries[i])
		}
	}

	write(0, 1000)
	waitFor(t, 30*time.Second, "first rows written", func() bool { return w.Stats().Written > 0 })
	if err := ch.Kill(); err != nil {
		t.Fatal(err)
	}
	// Every Write below returns while the server is down: if Write waited
	// for ClickHouse, this loop could not finish before the restart.
	write(1000, 2000)
	if ch.Running() {
		t.Fatal("clickhouse came back by itself")
	}
	waitFor(t, 30*time.Second, "batches spooled during the outage", func() bool { return w.Stats().Spooled > 0 })
	if w.Stats().ClickHouseLive {
		t.Fatal("writer believes clickhouse is live while it is killed")
	}

	if err := ch.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	write(2000, 3000)
	waitFor(t, 60*time.Second, "spools replayed", func() bool {
		for _, s := range []Stats{w.Stats(), w.LogStats()} {
			if !s.ClickHouseLive || s.SpoolPending != 0 || s.Written+s.Replayed+s.ReplaySkipped < 3000 {
				return false
			}
		}
		return true
	})
	closeWriter(t, w)
	st := w.Stats()
	for name, s := range map[string]Stats{"requests": st, "request log": w.LogStats()} {
		if s.Dropped != 0 {
			t.Fatalf("%s: dropped %d rows", name, s.Dropped)
		}
		if s.Replayed == 0 {
			t.Fatalf("%s: nothing replayed: %+v", name, s)
		}
	}
	conn := chtest.Connect(t, ch)
	n, distinct := countRows(t, conn, db, "requests")
	if n != 3000 || distinct != 3000 {
		t.Fatalf("requests has %d rows (%d distinct ids), want 3000 exactly once; stats %+v", n, distinct, st)
	}
	n, distinct = countRows(t, conn, db, wire.TableCaptures)
	if want := uint64(len(captured(recs))); n != want || distinct != want {
		t.Fatalf("captures has %d rows (%d distinct), want %d", n, distinct, want)
	}
	n, distinct = countRows(t, conn, db, wire.TableRequestLog)
	if n != 3000 || distinct != 3000 {
		t.Fatalf("request_log has %d rows (%d distinct ids), want 3000 exactly once; stats %+v", n, distinct, w.LogStats())
	}
}

// spoolWith writes batches into a fresh spool in dir, as a writer that
// could not reach ClickHouse would have.
func spoolWith(t *testing.T, dir string, batches ...[]extproc.Record) {
	t.Helper()
	s, _, err := openSpool[extproc.Record](dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	for _, b := range batches {
		if err := s.append(b); err != nil {
			t.Fatal(err)
		}
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	for _, name := range []string{spoolLogName, spoolOffsetName} {
		b, err := os.ReadFile(filepath.Join(from, name))
		if os.IsNotExist(err) {
			os.Remove(filepath.Join(to, name))
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestReplayAfterCrashBeforeOffsetWriteAddsNoDuplicates(t *testing.T) {
	ch := chtest.Shared(t)
	db := chtest.NewDatabase()
	spoolDir, snapshot := t.TempDir(), t.TempDir()
	recs := makeRecords(600, time.Now().Add(-30*time.Minute))
	spoolWith(t, spoolDir, recs[:200], recs[200:450], recs[450:])
	// The snapshot is the spool as a crash right after the inserts, before
	// any offset reached the disk, would leave it.
	copyDir(t, spoolDir, snapshot)

	w := newWriter(t, Options{Addr: ch.Addr, Database: db, SpoolDir: spoolDir})
	waitFor(t, 30*time.Second, "first replay", func() bool { return w.Stats().ClickHouseLive })
	closeWriter(t, w)
	if st := w.Stats(); st.Replayed != 600 || st.ReplaySkipped != 0 {
		t.Fatalf("first replay: %+v, want 600 replayed", st)
	}

	copyDir(t, snapshot, spoolDir)
	w = newWriter(t, Options{Addr: ch.Addr, Database: db, SpoolDir: spoolDir})
	waitFor(t, 30*time.Second, "second replay", func() bool { return w.Stats().ClickHouseLive })
	if st := w.Stats(); st.Replayed != 0 || st.ReplaySkipped != 600 {
		t.Fatalf("second replay: %+v, want all 600 skipped", st)
	}
	assertTableHolds(t, w, requestsTable, recs)
	assertTableHolds(t, w, capturesTable, captured(recs))
	closeWriter(t, w)
}

func TestReplayOfTornSpoolKeepsEarlierBatches(t *testing.T) {
	ch := chtest.Shared(t)
	db := chtest.NewDatabase()
	dir := t.TempDir()
	recs := makeRecords(300, time.Now())
	spoolWith(t, dir, recs[:100], recs[100:200])
	frame, err := encodeFrame(recs[200:])
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, spoolLogName), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(frame[:len(frame)*2/3]) // the crash cut this batch short
	f.Close()

	w := newWriter(t, Options{Addr: ch.Addr, Database: db, SpoolDir: dir})
	waitFor(t, 30*time.Second, "replay", func() bool { return w.Stats().ClickHouseLive })
	assertTableHolds(t, w, requestsTable, recs[:200])
	closeWriter(t, w)
}

func TestWriterDropsAndCountsBeyondSpoolCap(t *testing.T) {
	// Nothing listens on this port: every batch goes to the spool.
	ports, err := procs.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	frame, err := encodeFrame(makeRecords(10, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	w := newWriter(t, Options{
		Addr: fmt.Sprintf("127.0.0.1:%d", ports[0]), Database: chtest.NewDatabase(),
		BatchSize: 10, SpoolMaxBytes: int64(3*len(frame) + len(frame)/2), Registerer: reg,
	})
	for _, r := range makeRecords(100, time.Now()) {
		w.Write(r)
	}
	waitFor(t, 30*time.Second, "every batch spooled or dropped", func() bool {
		s := w.Stats()
		return s.Spooled+s.Dropped == 100
	})
	// The logger spools records in groups of up to 10 as they come, so
	// the cap of 3.5 full groups' bytes holds at least 2.5 groups' worth
	// (the last group that fitted) and at most 3.5.
	st := w.Stats()
	if st.Spooled < 25 || st.Spooled > 35 || st.SpoolBytes > int64(3*len(frame)+len(frame)/2) {
		t.Fatalf("stats %+v, want 25 to 35 spooled within the cap of %d bytes, the rest dropped", st, 3*len(frame)+len(frame)/2)
	}
	if got := metricValue(t, reg, "llmcanary_telemetry_dropped_total"); got != float64(st.Dropped) {
		t.Fatalf("llmcanary_telemetry_dropped_total = %v, want %d", got, st.Dropped)
	}
	if got := metricValue(t, reg, "llmcanary_telemetry_spooled_total"); got != float64(st.Spooled) {
		t.Fatalf("llmcanary_telemetry_spooled_total = %v, want %d", got, st.Spooled)
	}
	if got := metricValue(t, reg, "llmcanary_telemetry_spool_bytes"); got != float64(st.SpoolBytes) || got == 0 {
		t.Fatalf("llmcanary_telemetry_spool_bytes = %v, want %d", got, st.SpoolBytes)
	}
	closeWriter(t, w)
	w.Write(makeRecord(100, time.Now())) // after Close: dropped, not a panic
	if got := w.Stats().Dropped; got != st.Dropped+1 {
		t.Fatalf("dropped %d after a write to a closed writer, want %d", got, st.Dropped+1)
	}
}

func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		m := mf.GetMetric()[0]
		if m.Counter != nil {
			return m.Counter.GetValue()
		}
		return m.Gauge.GetValue()
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

func TestNewSucceedsWhileClickHouseIsDownAndCreatesSchemaLater(t *testing.T) {
	ch := chtest.Own(t)
	db := chtest.NewDatabase()
	if err := ch.Kill(); err != nil {
		t.Fatal(err)
	}
	w := newWriter(t, Options{Addr: ch.Addr, Database: db})
	recs := makeRecords(120, time.Now())
	for _, r := range recs {
		w.Write(r)
	}
	waitFor(t, 30*time.Second, "records spooled", func() bool { return w.Stats().Spooled == 120 })
	if err := ch.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "replay", func() bool { return w.Stats().ClickHouseLive })
	assertTableHolds(t, w, requestsTable, recs)
	closeWriter(t, w)
}

func TestCloseLeavesWhatClickHouseDidNotTakeForTheNextWriter(t *testing.T) {
	ch := chtest.Own(t)
	db := chtest.NewDatabase()
	dir := t.TempDir()
	w := newWriter(t, Options{Addr: ch.Addr, Database: db, SpoolDir: dir, FlushInterval: time.Hour})
	recs := makeRecords(40, time.Now())
	for _, r := range recs {
		w.Write(r)
	}
	if err := ch.Kill(); err != nil {
		t.Fatal(err)
	}
	closeWriter(t, w)
	if st := w.Stats(); st.Logged != 40 || st.Written != 0 || st.SpoolPending == 0 {
		t.Fatalf("stats %+v, want the 40 queued records left in the spool on close", st)
	}
	if err := ch.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	w = newWriter(t, Options{Addr: ch.Addr, Database: db, SpoolDir: dir})
	waitFor(t, 30*time.Second, "replay", func() bool { return w.Stats().ClickHouseLive })
	assertTableHolds(t, w, requestsTable, recs)
	closeWriter(t, w)
}

func TestMigrationAddsColumnsAnOlderTableLacks(t *testing.T) {
	ch := chtest.Shared(t)
	db := chtest.NewDatabase()
	conn := chtest.Connect(t, ch)
	ctx := context.Background()
	// A row of the older release, which had only the first ten columns:
	// it reads the zero of each column added since, and sample_rate 1 (it
	// measured every request).
	oldRow := extproc.Record{
		Time: time.Now().Add(-time.Minute), RequestID: "from-the-older-release",
		Model: "llama", Version: "v0", Cluster: "pool-0", Path: "/v1/completions", Bucket: 7,
	}
	createOlderRequests(t, conn, db, 10, oldRow)
	w := newWriter(t, Options{Addr: ch.Addr, Database: db})
	recs := makeRecords(10, time.Now())
	for _, r := range recs {
		w.Write(r)
	}
	closeWriter(t, w)
	w = newWriter(t, Options{Addr: ch.Addr, Database: db})
	defer closeWriter(t, w)
	assertTableHolds(t, w, requestsTable, append(recs, oldRow))
	have, err := existingColumns(ctx, conn, db, requestsTable.name)
	if err != nil {
		t.Fatal(err)
	}
	if len(have) != len(requestColumns) {
		t.Fatalf("table has %d columns after migration, want %d", len(have), len(requestColumns))
	}
	assertStoredAtRateOne(t, conn, db, oldRow.RequestID)
}

func TestDropPartitionsBeforeKeepsRecentDays(t *testing.T) {
	ch := chtest.Shared(t)
	db := chtest.NewDatabase()
	w := newWriter(t, Options{Addr: ch.Addr, Database: db})
	now := time.Now().UTC()
	var recs []extproc.Record
	for _, age := range []int{5, 4, 1, 0} {
		for i, r := range makeRecords(5, now.AddDate(0, 0, -age)) {
			r.RequestID = fmt.Sprintf("age%d-%d", age, i)
			r.Captured = true
			recs = append(recs, r)
		}
	}
	for _, r := range recs {
		w.Write(r)
	}
	closeWriter(t, w)
	w = newWriter(t, Options{Addr: ch.Addr, Database: db})
	defer closeWriter(t, w)
	n, err := w.DropPartitionsBefore(context.Background(), now.AddDate(0, 0, -2))
	if err != nil {
		t.Fatal(err)
	}
	if n != 4 {
		t.Fatalf("dropped %d partitions, want 4 (two days in each of two tables)", n)
	}
	assertTableHolds(t, w, requestsTable, recs[10:])
	assertTableHolds(t, w, capturesTable, recs[10:])
}

func TestOptionsValidateReportsEveryProblem(t *testing.T) {
	err := Options{Database: "x; DROP", RetryMin: time.Second, RetryMax: time.Millisecond}.Validate()
	if err == nil {
		t.Fatal("invalid options accepted")
	}
	for _, want := range []string{"Addr", "SpoolDir", "identifier", "RetryMax"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func TestParseVersionAndExtras(t *testing.T) {
	cases := []struct {
		version   string
		retention int
		extras    int
	}{
		{"18.16.1", 30, 0},
		{"19.5.4.22", 30, 0},
		{"19.6.1", 30, len(tables)},
		{"22.2.3", 7, len(tables)},
		{"24.3.1.2672", 7, 2 * len(tables)},
		{"24.3.1.2672", 0, 0},
	}
	for _, tc := range cases {
		v, err := parseVersion(tc.version)
		if err != nil {
			t.Fatal(err)
		}
		if got := extraDDL(v, "db", tc.retention); len(got) != tc.extras {
			t.Errorf("%s retention %d: %d extras %v, want %d", tc.version, tc.retention, len(got), got, tc.extras)
		}
	}
	if _, err := parseVersion("unknown"); err == nil {
		t.Error("parsed a version without numbers")
	}
}

// TestRecordIsOnDiskBeforeItWaitsForClickHouse: a record reaches the
// spool's disk as soon as the logger has it, long before the flush
// interval sends it to ClickHouse; a crash then (the spool as it is on
// disk, taken by a new Writer) loses nothing and stores each row once.
func TestRecordIsOnDiskBeforeItWaitsForClickHouse(t *testing.T) {
	ch := chtest.Shared(t)
	db := chtest.NewDatabase()
	dir, crashed, crashed2 := t.TempDir(), t.TempDir(), t.TempDir()
	w := newWriter(t, Options{Addr: ch.Addr, Database: db, SpoolDir: dir, FlushInterval: time.Hour})
	recs := makeRecords(120, time.Now())
	for _, r := range recs {
		w.Write(r)
	}
	waitFor(t, 5*time.Second, "records logged", func() bool { return w.Stats().Logged == 120 })
	copyDir(t, dir, crashed) // what a SIGKILL now would leave on disk
	copyDir(t, dir, crashed2)
	if st := w.Stats(); st.Written != 0 {
		t.Fatalf("stats %+v: rows reached ClickHouse before the flush interval", st)
	}
	closeWriter(t, w) // inserts the 120 rows: the crashed copy's replay must skip them all

	w = newWriter(t, Options{Addr: ch.Addr, Database: db, SpoolDir: crashed})
	waitFor(t, 30*time.Second, "replay", func() bool { return w.Stats().ClickHouseLive })
	if st := w.Stats(); st.ReplaySkipped != 120 || st.Replayed != 0 {
		t.Fatalf("replay of the crashed spool: %+v, want all 120 rows found already stored", st)
	}
	assertTableHolds(t, w, requestsTable, recs)
	closeWriter(t, w)

	// Into a database that missed them it inserts every one.
	w = newWriter(t, Options{Addr: ch.Addr, Database: chtest.NewDatabase(), SpoolDir: crashed2})
	waitFor(t, 30*time.Second, "replay", func() bool { return w.Stats().ClickHouseLive })
	assertTableHolds(t, w, requestsTable, recs)
	closeWriter(t, w)
}

// TestRowsArrivingWithinTheCommitDelayShareOneDiskWrite: rows written one
// at a time, a millisecond apart, reach the spool as a few frames (one
// write and fsync each) when they arrive within the commit delay, and as
// about one frame per row without it.
func TestRowsArrivingWithinTheCommitDelayShareOneDiskWrite(t *testing.T) {
	ch := chtest.Shared(t)
	frames := func(delay time.Duration) int {
		dir := t.TempDir()
		w := newWriter(t, Options{Addr: ch.Addr, Database: chtest.NewDatabase(), SpoolDir: dir, FlushInterval: time.Hour, CommitDelay: delay})
		const n = 40
		for _, r := range makeRecords(n, time.Now()) {
			w.Write(r)
			time.Sleep(time.Millisecond)
		}
		waitFor(t, 5*time.Second, "records logged", func() bool { return w.Stats().Logged == n })
		f, err := os.Open(filepath.Join(dir, spoolLogName))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		count, rows := 0, 0
		for pos := int64(0); pos < st.Size(); count++ {
			batch, end, err := readFrame[extproc.Record](f, pos, st.Size())
			if err != nil {
				t.Fatal(err)
			}
			pos, rows = end, rows+len(batch)
		}
		if rows != n {
			t.Fatalf("the spool holds %d rows, want %d", rows, n)
		}
		closeWriter(t, w)
		return count
	}
	grouped, single := frames(500*time.Millisecond), frames(-1)
	t.Logf("40 rows 1 ms apart: %d frames with a 500 ms commit delay, %d without", grouped, single)
	if grouped > 2 {
		t.Errorf("with a 500 ms commit delay 40 rows written within ~50 ms took %d frames, want at most 2", grouped)
	}
	if single < 20 {
		t.Errorf("without a commit delay 40 rows 1 ms apart took only %d frames: the test does not show the delay's effect", single)
	}
}
