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
	"regexp"
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
	// Addr is ClickHouse's native-protocol address, host:port.
	Addr string
	// Database holds the tables; default wire.Database.
	Database string
	// BatchSize is the most rows per insert; default 5000.
	BatchSize int
	// FlushInterval is the longest a spooled record waits for a full batch
	// before it is inserted; default 1 s. It does not delay durability:
	// records reach the spool's disk as soon as the logger gets them.
	FlushInterval time.Duration
	// QueueSize bounds the rows of each type waiting in memory for the
	// logger; default 20×BatchSize. Write drops (and counts) rows beyond
	// it.
	QueueSize int
	// SpoolDir holds the spool, the write-ahead log of records not yet in
	// ClickHouse, and in its subdirectory request_log that of the access
	// log's entries. Required; one Writer (one process) per directory,
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
	if o.Addr == "" {
		errs = append(errs, errors.New("chwriter: Addr is required"))
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
// and access-log entries in ClickHouse. Write and WriteLog are safe for
// concurrent use; Close once when done.
type Writer struct {
	o    Options
	log  *slog.Logger
	conn driver.Conn

	// mu guards schemaReady and version, shared by the pipes.
	mu          sync.Mutex
	schemaReady bool
	version     serverVersion

	requests   *pipe[extproc.Record]
	requestLog *pipe[extproc.LogEntry]
}

// New opens the spools, connects to ClickHouse and creates or migrates the
// schema. It succeeds when ClickHouse is down: rows are then spooled and
// the schema is created once the server answers. Rows a previous Writer
// left in the spools (an outage, a crash) are inserted first, each once.
func New(ctx context.Context, o Options) (*Writer, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	o.setDefaults()
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:         []string{o.Addr},
		DialTimeout:  2 * time.Second,
		ReadTimeout:  o.InsertTimeout,
		MaxOpenConns: 4,
		MaxIdleConns: 2,
		Compression:  &clickhouse.Compression{Method: clickhouse.CompressionLZ4},
	})
	if err != nil {
		return nil, fmt.Errorf("chwriter: open %s: %w", o.Addr, err)
	}
	w := &Writer{o: o, log: o.Logger, conn: conn}
	// The requests' spool is opened first: its lock on SpoolDir keeps a
	// second process away from both.
	if w.requests, err = openPipe(w, requestRows); err != nil {
		conn.Close()
		return nil, err
	}
	if w.requestLog, err = openPipe(w, requestLogRows); err != nil {
		w.requests.abandon()
		conn.Close()
		return nil, err
	}
	sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
	err = w.ensureSchema(sctx)
	scancel()
	if err != nil {
		w.log.Warn("clickhouse unavailable at start: spooling telemetry until it answers", "addr", o.Addr, "err", err)
	}
	w.requests.start(err == nil)
	w.requestLog.start(err == nil)
	return w, nil
}

// Write queues r for insertion into wire.TableRequests (and wire.TableCaptures
// when captured) and returns at once. When the queue is full or the Writer
// is closed, r is dropped and counted. A record without a RequestID gets a
// random one, since replay deduplicates by request id; non-finite
// durations or costs are stored as 0.
func (w *Writer) Write(r extproc.Record) { w.requests.write(r) }

// WriteLog queues e for insertion into wire.TableRequestLog, as Write does
// records, through a queue and spool of its own.
func (w *Writer) WriteLog(e extproc.LogEntry) { w.requestLog.write(e) }

// Close stops accepting rows, spools what is queued, inserts what the
// spools hold while ClickHouse is live and ctx lasts, and releases the
// connection and the spools. What ClickHouse did not take is inserted by
// the next Writer on the same SpoolDir.
func (w *Writer) Close(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- w.requestLog.close(ctx) }()
	err := w.requests.close(ctx)
	logErr := <-errc
	if errors.Is(err, ErrClosed) {
		return err
	}
	return errors.Join(err, logErr, w.conn.Close())
}

// Stats returns the counters of the request rows (wire.TableRequests).
func (w *Writer) Stats() Stats { return w.requests.stats() }

// LogStats returns the counters of the request log (wire.TableRequestLog).
func (w *Writer) LogStats() Stats { return w.requestLog.stats() }

// DropPartitionsBefore drops the daily partitions of the writer's tables
// whose rows are all from days before the day of before (UTC), and returns
// how many it dropped. This is retention on servers without TTL.
func (w *Writer) DropPartitionsBefore(ctx context.Context, before time.Time) (int, error) {
	return dropPartitionsBefore(ctx, w.conn, w.o.Database, before)
}

func (w *Writer) ensureSchema(ctx context.Context) error {
	w.mu.Lock()
	ready := w.schemaReady
	w.mu.Unlock()
	if ready {
		return w.conn.Ping(ctx)
	}
	v, err := migrate(ctx, w.conn, w.o.Database, w.o.RetentionDays)
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.schemaReady, w.version = true, v
	w.mu.Unlock()
	return nil
}

// applyRetention drops the partitions older than RetentionDays when
// ClickHouse is live and has no TTL.
func (w *Writer) applyRetention(ctx context.Context, live bool) {
	w.mu.Lock()
	v := w.version
	w.mu.Unlock()
	if !live || v.atLeast(19, 6) { // TTL does it there
		return
	}
	ctx, cancel := context.WithTimeout(ctx, w.o.InsertTimeout)
	defer cancel()
	before := time.Now().AddDate(0, 0, -w.o.RetentionDays)
	if n, err := w.DropPartitionsBefore(ctx, before); err != nil {
		w.log.Warn("telemetry retention failed", "err", err)
	} else if n > 0 {
		w.log.Info("telemetry retention dropped partitions", "partitions", n, "before", day(before))
	}
}

func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
