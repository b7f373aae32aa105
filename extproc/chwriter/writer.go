// Package chwriter writes extproc.Records (measured requests) and
// extproc.LogEntries (Envoy's access log of every request) into ClickHouse
// in batches. Write and WriteLog never block: rows wait in a bounded queue;
// a logger goroutine appends them to an on-disk spool and fsyncs it, a
// group of rows per disk write (group commit), so a row is durable within
// a disk write of Write; an inserter goroutine then sends the spooled rows
// to ClickHouse by size and time and records how far ClickHouse has them.
// A crash therefore loses only rows still in the queue; the next Writer on
// the same spool inserts the rest, in order and without duplicates, as it
// does after a ClickHouse outage. What cannot be kept (queue full, spool at
// its cap) is dropped and counted. Each row type has its own queue, spool
// and goroutines.
package chwriter

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/internal/wire"
)

var (
	_ extproc.Sink    = (*Writer)(nil)
	_ extproc.LogSink = (*Writer)(nil)
)

// ErrClosed reports a call on a closed Writer.
var ErrClosed = errors.New("writer closed")

// Options configures a Writer. Zero values take the documented defaults.
type Options struct {
	// Addr is ClickHouse's native-protocol address, host:port, for a lone
	// server. Leave it empty with Cluster.
	Addr string
	// Cluster, when set, shards the telemetry over the ClickHouse cluster
	// of that name in the servers' remote_servers config: each row goes to
	// the local tables (name + LocalSuffix) of the shard ShardOf picks by
	// its bucket, through a queue and spool of that shard's own, so one
	// shard away never holds up the others; Distributed tables under the
	// lone server's names read every shard.
	Cluster string
	// Shards are the cluster's shards' native-protocol addresses, host:port,
	// one per shard in the order of remote_servers. Required with Cluster.
	Shards []string
	// ReplicaPath, when set, makes the local tables ReplicatedMergeTree
	// with coordinator path ReplicaPath/<table> and the servers' {replica}
	// macro as replica name, e.g. /clickhouse/tables/{shard}/llmcanary. The
	// servers need ZooKeeper or ClickHouse Keeper configured. Empty:
	// MergeTree.
	ReplicaPath string
	// Database holds the tables; default wire.Database.
	Database string
	// BatchSize is the most rows per insert; default 5000.
	BatchSize int
	// FlushInterval is the longest a spooled record waits for a full batch
	// before it is inserted; default 1 s. It does not delay durability:
	// records reach the spool's disk as soon as the logger gets them.
	FlushInterval time.Duration
	// CommitDelay is how long the spool's logger, once it has a row, waits
	// for more before it writes and fsyncs them as one group; default 10 ms,
	// negative: none. Under load an fsync per few rows is most of the
	// service's work; the wait makes groups of many rows, and a row
	// reaches the disk at most CommitDelay later. A row the service has
	// counted as logged is on disk whatever the delay.
	CommitDelay time.Duration
	// QueueSize bounds the rows of each type waiting in memory for the
	// logger; default 20×BatchSize. Write drops (and counts) rows beyond
	// it.
	QueueSize int
	// SpoolDir holds the spool, the write-ahead log of records not yet in
	// ClickHouse, and in its subdirectory request_log that of the access
	// log's entries; with Cluster, one such pair per shard in the
	// subdirectories shard-1, shard-2, …. Required; one Writer (one process) per directory,
	// which New enforces with a lock.
	SpoolDir string
	// SpoolMaxBytes caps each spool file; default 1 GiB. Rows beyond it
	// (ClickHouse away for long) are dropped and counted.
	SpoolMaxBytes int64
	// RetryMin and RetryMax bound the backoff between attempts to reach
	// ClickHouse during an outage; defaults 200 ms and 10 s.
	RetryMin, RetryMax time.Duration
	// InsertTimeout bounds one insert or replay step; default 15 s.
	InsertTimeout time.Duration
	// RetentionDays, when positive, keeps that many days of rows: by TTL on
	// servers that have it, else by dropping old partitions hourly.
	RetentionDays int
	// Registerer receives the writer's metrics; nil registers none.
	Registerer prometheus.Registerer
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// DefaultCommitDelay is Options.CommitDelay's default.
const DefaultCommitDelay = 10 * time.Millisecond

var identRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func (o *Options) setDefaults() {
	if o.Database == "" {
		o.Database = wire.Database
	}
	if o.BatchSize == 0 {
		o.BatchSize = 5000
	}
	if o.FlushInterval == 0 {
		o.FlushInterval = time.Second
	}
	if o.CommitDelay == 0 {
		o.CommitDelay = DefaultCommitDelay
	}
	if o.QueueSize == 0 {
		o.QueueSize = 20 * o.BatchSize
	}
	if o.SpoolMaxBytes == 0 {
		o.SpoolMaxBytes = 1 << 30
	}
	if o.RetryMin == 0 {
		o.RetryMin = 200 * time.Millisecond
	}
	if o.RetryMax == 0 {
		o.RetryMax = 10 * time.Second
	}
	if o.InsertTimeout == 0 {
		o.InsertTimeout = 15 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Validate reports every invalid option at once.
func (o Options) Validate() error {
	var errs []error
	switch {
	case o.Cluster == "" && o.Addr == "":
		errs = append(errs, errors.New("chwriter: Addr is required"))
	case o.Cluster == "" && len(o.Shards) > 0:
		errs = append(errs, errors.New("chwriter: Shards need a Cluster name"))
	case o.Cluster != "" && o.Addr != "":
		errs = append(errs, errors.New("chwriter: give a cluster's servers as Shards, not Addr"))
	case o.Cluster != "" && !identRe.MatchString(o.Cluster):
		errs = append(errs, fmt.Errorf("chwriter: Cluster %q is not a plain identifier", o.Cluster))
	case o.Cluster != "" && len(o.Shards) == 0:
		errs = append(errs, fmt.Errorf("chwriter: cluster %s needs its shards' addresses (Shards)", o.Cluster))
	}
	for i, a := range o.Shards {
		if _, _, err := net.SplitHostPort(a); err != nil {
			errs = append(errs, fmt.Errorf("chwriter: shard %d address %q: %w", i+1, a, err))
		}
	}
	if o.ReplicaPath != "" && (!strings.HasPrefix(o.ReplicaPath, "/") || strings.ContainsAny(o.ReplicaPath, "'\\")) {
		errs = append(errs, fmt.Errorf("chwriter: ReplicaPath %q must start with / and hold no quote or backslash", o.ReplicaPath))
	}
	if o.SpoolDir == "" {
		errs = append(errs, errors.New("chwriter: SpoolDir is required"))
	}
	if o.Database != "" && !identRe.MatchString(o.Database) {
		errs = append(errs, fmt.Errorf("chwriter: Database %q is not a plain identifier", o.Database))
	}
	if o.BatchSize < 0 || o.QueueSize < 0 || o.SpoolMaxBytes < 0 || o.FlushInterval < 0 {
		errs = append(errs, errors.New("chwriter: sizes and intervals must not be negative"))
	}
	if o.RetryMax != 0 && o.RetryMax < o.RetryMin {
		errs = append(errs, errors.New("chwriter: RetryMax is below RetryMin"))
	}
	return errors.Join(errs...)
}

// Stats counts rows by what happened to them. Written and Replayed are
// rows inserted into wire.TableRequests (Stats) or wire.TableRequestLog
// (LogStats), in the normal course or by replaying what an outage or a
// crash left in the spool.
type Stats struct {
	Logged         uint64 // rows appended to the spool (every row kept)
	Written        uint64
	Spooled        uint64 // rows logged while ClickHouse was away: they wait for replay
	Dropped        uint64
	Replayed       uint64
	ReplaySkipped  uint64 // spooled rows already in ClickHouse, not inserted again
	SpoolBytes     int64  // size of the spool file
	SpoolPending   int64  // bytes of the spool not yet in ClickHouse
	ClickHouseLive bool   // the last insert succeeded and no outage backlog waits
}

// Writer is an extproc.Sink and an extproc.LogSink that stores records
// and access-log entries in ClickHouse: one lone server, or the shards of
// a cluster. Write and WriteLog are safe for concurrent use; Close once
// when done.
type Writer struct {
	o    Options
	log  *slog.Logger
	conn driver.Conn // the first shard's

	shards []*shard
}

// shard is one server the writer inserts into, a lone server or one
// shard of a cluster, with its connection, its schema state and a pipe
// (queue, spool, inserter) per row type.
type shard struct {
	num  int // 1-based, as system.clusters numbers shards
	addr string
	conn driver.Conn
	lay  layout

	// mu guards schemaReady and version, shared by the shard's pipes.
	mu          sync.Mutex
	schemaReady bool
	version     serverVersion

	requests   *pipe[extproc.Record]
	requestLog *pipe[extproc.LogEntry]
}

// New opens the spools, connects to ClickHouse and creates or migrates the
// schema. It succeeds when ClickHouse (or a shard) is down: its rows are
// then spooled and the schema is created once the server answers. Rows a
// previous Writer left in the spools (an outage, a crash) are inserted
// first, each once.
func New(ctx context.Context, o Options) (*Writer, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	o.setDefaults()
	w := &Writer{o: o, log: o.Logger}
	addrs := []string{o.Addr}
	if o.Cluster != "" {
		addrs = o.Shards
	}
	for i, a := range addrs {
		sh, err := w.openShard(i+1, a)
		if err != nil {
			w.abandon()
			return nil, err
		}
		w.shards = append(w.shards, sh)
	}
	w.conn = w.shards[0].conn
	lives := make([]bool, len(w.shards))
	var wg sync.WaitGroup
	for i, sh := range w.shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
			err := sh.ensureSchema(sctx)
			scancel()
			if err != nil {
				w.log.Warn("clickhouse unavailable at start: spooling telemetry until it answers", "addr", sh.addr, "err", err)
			}
			lives[i] = err == nil
		}()
	}
	wg.Wait()
	for i, sh := range w.shards {
		sh.requests.start(lives[i])
		sh.requestLog.start(lives[i])
	}
	return w, nil
}

// openShard connects to one server and opens its pipes.
func (w *Writer) openShard(num int, addr string) (*shard, error) {
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:         []string{addr},
		DialTimeout:  2 * time.Second,
		ReadTimeout:  w.o.InsertTimeout,
		MaxOpenConns: 4,
		MaxIdleConns: 2,
		Compression:  &clickhouse.Compression{Method: clickhouse.CompressionLZ4},
	})
	if err != nil {
		return nil, fmt.Errorf("chwriter: open %s: %w", addr, err)
	}
	sh := &shard{num: num, addr: addr, conn: conn, lay: layout{
		db: w.o.Database, cluster: w.o.Cluster, shards: len(w.o.Shards),
		replicaPath: w.o.ReplicaPath, retentionDays: w.o.RetentionDays,
	}}
	// The requests' spool is opened first: its lock on the shard's spool
	// directory keeps a second process away from both.
	if sh.requests, err = openPipe(w, sh, requestRows); err != nil {
		conn.Close()
		return nil, err
	}
	if sh.requestLog, err = openPipe(w, sh, requestLogRows); err != nil {
		sh.requests.abandon()
		conn.Close()
		return nil, err
	}
	return sh, nil
}

// abandon releases the shards opened so far by a New that failed.
func (w *Writer) abandon() {
	for _, sh := range w.shards {
		sh.requests.abandon()
		sh.requestLog.abandon()
		sh.conn.Close()
	}
}

// spoolDir is the shard's part of Options.SpoolDir.
func (w *Writer) spoolDir(sh *shard) string {
	if w.o.Cluster == "" {
		return w.o.SpoolDir
	}
	return filepath.Join(w.o.SpoolDir, fmt.Sprintf("shard-%d", sh.num))
}

// shardOf is the shard that stores the rows of bucket.
func (w *Writer) shardOf(bucket uint64) *shard { return w.shards[ShardOf(bucket, len(w.shards))] }

// Write queues r for insertion into wire.TableRequests (and wire.TableCaptures
// when captured) and returns at once. When the queue is full or the Writer
// is closed, r is dropped and counted. A record without a RequestID gets a
// random one, since replay deduplicates by request id; non-finite
// durations or costs are stored as 0.
func (w *Writer) Write(r extproc.Record) { w.shardOf(r.Bucket).requests.write(r) }

// WriteLog queues e for insertion into wire.TableRequestLog, as Write does
// records, through a queue and spool of its own.
func (w *Writer) WriteLog(e extproc.LogEntry) { w.shardOf(e.Bucket).requestLog.write(e) }

// Close stops accepting rows, spools what is queued, inserts what the
// spools hold while ClickHouse is live and ctx lasts, and releases the
// connections and the spools. What ClickHouse did not take is inserted by
// the next Writer on the same SpoolDir.
func (w *Writer) Close(ctx context.Context) error {
	errs := make([]error, 2*len(w.shards))
	var wg sync.WaitGroup
	for i, sh := range w.shards {
		wg.Add(2)
		go func() { defer wg.Done(); errs[2*i] = sh.requests.close(ctx) }()
		go func() { defer wg.Done(); errs[2*i+1] = sh.requestLog.close(ctx) }()
	}
	wg.Wait()
	if errors.Is(errs[0], ErrClosed) {
		return errs[0]
	}
	for _, sh := range w.shards {
		errs = append(errs, sh.conn.Close())
	}
	return errors.Join(errs...)
}

// Stats returns the counters of the request rows (wire.TableRequests),
// summed over the shards; ClickHouseLive holds when every shard is live.
func (w *Writer) Stats() Stats { return sumStats(w.ShardStats()) }

// LogStats returns the counters of the request log (wire.TableRequestLog),
// summed over the shards.
func (w *Writer) LogStats() Stats { return sumStats(w.ShardLogStats()) }

// ShardStats returns the counters of the request rows of each shard, in
// shard order; one for a lone server.
func (w *Writer) ShardStats() []Stats {
	out := make([]Stats, len(w.shards))
	for i, sh := range w.shards {
		out[i] = sh.requests.stats()
	}
	return out
}

// ShardLogStats returns the counters of the request log of each shard.
func (w *Writer) ShardLogStats() []Stats {
	out := make([]Stats, len(w.shards))
	for i, sh := range w.shards {
		out[i] = sh.requestLog.stats()
	}
	return out
}

func sumStats(ss []Stats) Stats {
	sum := Stats{ClickHouseLive: true}
	for _, s := range ss {
		sum.Logged += s.Logged
		sum.Written += s.Written
		sum.Spooled += s.Spooled
		sum.Dropped += s.Dropped
		sum.Replayed += s.Replayed
		sum.ReplaySkipped += s.ReplaySkipped
		sum.SpoolBytes += s.SpoolBytes
		sum.SpoolPending += s.SpoolPending
		sum.ClickHouseLive = sum.ClickHouseLive && s.ClickHouseLive
	}
	return sum
}

// DropPartitionsBefore drops the daily partitions of the writer's tables
// whose rows are all from days before the day of before (UTC), on every
// shard, and returns how many it dropped. This is retention on servers
// without TTL.
func (w *Writer) DropPartitionsBefore(ctx context.Context, before time.Time) (int, error) {
	total := 0
	for _, sh := range w.shards {
		n, err := dropPartitionsBefore(ctx, sh.conn, sh.lay, before)
		total += n
		if err != nil {
			return total, fmt.Errorf("shard %s: %w", sh.addr, err)
		}
	}
	return total, nil
}

func (sh *shard) ensureSchema(ctx context.Context) error {
	sh.mu.Lock()
	ready := sh.schemaReady
	sh.mu.Unlock()
	if ready {
		return sh.conn.Ping(ctx)
	}
	v, err := migrate(ctx, sh.conn, sh.lay)
	if err != nil {
		return err
	}
	sh.mu.Lock()
	sh.schemaReady, sh.version = true, v
	sh.mu.Unlock()
	return nil
}

// applyRetention drops the shard's partitions older than RetentionDays
// when its server is live and has no TTL.
func (w *Writer) applyRetention(ctx context.Context, sh *shard, live bool) {
	sh.mu.Lock()
	v := sh.version
	sh.mu.Unlock()
	if !live || v.atLeast(19, 6) { // TTL does it there
		return
	}
	ctx, cancel := context.WithTimeout(ctx, w.o.InsertTimeout)
	defer cancel()
	before := time.Now().AddDate(0, 0, -w.o.RetentionDays)
	if n, err := dropPartitionsBefore(ctx, sh.conn, sh.lay, before); err != nil {
		w.log.Warn("telemetry retention failed", "addr", sh.addr, "err", err)
	} else if n > 0 {
		w.log.Info("telemetry retention dropped partitions", "addr", sh.addr, "partitions", n, "before", day(before))
	}
}

func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
