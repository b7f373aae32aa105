// Package chwriter writes extproc.Records into ClickHouse in batches. Write
// never blocks: records wait in a bounded queue; a logger goroutine appends
// them to an on-disk spool and fsyncs it, a group of records per disk write
// (group commit), so a record is durable within a disk write of Write; an
// inserter goroutine then sends the spooled records to ClickHouse by size
// and time and records how far ClickHouse has them. A crash therefore loses
// only records still in the queue; the next Writer on the same spool
// inserts the rest, in order and without duplicates, as it does after a
// ClickHouse outage. What cannot be kept (queue full, spool at its cap) is
// dropped and counted.
package chwriter

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/internal/wire"
)

var _ extproc.Sink = (*Writer)(nil)

// ErrClosed reports a call on a closed Writer.
var ErrClosed = errors.New("writer closed")

// Options configures a Writer. Zero values take the documented defaults.
type Options struct {
	// Addr is ClickHouse's native-protocol address, host:port.
	Addr string
	// Database holds the tables; default wire.Database.
	Database string
	// BatchSize is the most rows per insert; default 500.
	BatchSize int
	// FlushInterval is the longest a spooled record waits for a full batch
	// before it is inserted; default 1 s. It does not delay durability:
	// records reach the spool's disk as soon as the logger gets them.
	FlushInterval time.Duration
	// QueueSize bounds the records waiting in memory for the logger;
	// default 20×BatchSize. Write drops (and counts) records beyond it.
	QueueSize int
	// SpoolDir holds the spool, the write-ahead log of records not yet in
	// ClickHouse. Required; one Writer (one process) per directory, which
	// New enforces with a lock.
	SpoolDir string
	// SpoolMaxBytes caps the spool file; default 1 GiB. Records beyond it
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
		o.BatchSize = 500
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
// rows inserted into wire.TableRequests, in the normal course or by
// replaying what an outage or a crash left in the spool.
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

// Writer is an extproc.Sink that stores records in ClickHouse. Write is
// safe for concurrent use; Close once when done.
type Writer struct {
	o    Options
	log  *slog.Logger
	conn driver.Conn

	in       chan extproc.Record
	closeMu  sync.RWMutex
	closed   bool
	closeCtx context.Context // read by the inserter after the logger is done

	base    context.Context // cancelled by Close to stop the inserter
	cancel  context.CancelFunc
	wake    chan struct{} // the logger tells the inserter a full batch waits
	logDone chan struct{} // closed when the logger has spooled the last record
	insDone chan struct{}

	// mu guards the spool, healthy, schemaReady, version, pendingRows and
	// mem. The logger is the spool's only appender and the inserter its
	// only reader and committer.
	mu          sync.Mutex
	spool       *spool
	healthy     bool
	schemaReady bool
	version     serverVersion
	pendingRows int64 // rows in the spool not yet in ClickHouse
	// mem keeps the records of the spool's last frames as the logger
	// appended them, so the inserter need not read and decode them back:
	// always a suffix of the log (the frames ending at its end), its
	// oldest frames given up beyond QueueSize rows. Being a suffix, it
	// needs no offsets and survives truncation and compaction.
	mem      []memFrame
	memBytes int64
	memRows  int

	logged, written, spooled, dropped, replayed, skipped atomic.Uint64
	droppedLogged                                        atomic.Uint64
	lastDropLog                                          atomic.Int64
	spoolBytes, spoolPending                             atomic.Int64

	collectors []prometheus.Collector
}

// New opens the spool, connects to ClickHouse and creates or migrates the
// schema. It succeeds when ClickHouse is down: records are then spooled and
// the schema is created once the server answers. Rows a previous Writer
// left in the spool (an outage, a crash) are inserted first, each once.
func New(ctx context.Context, o Options) (*Writer, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	o.setDefaults()
	sp, discarded, err := openSpool(o.SpoolDir, o.SpoolMaxBytes)
	if err != nil {
		return nil, err
	}
	if discarded > 0 {
		o.Logger.Warn("telemetry spool: discarded a torn tail left by a crash", "bytes", discarded, "dir", o.SpoolDir)
	}
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:         []string{o.Addr},
		DialTimeout:  2 * time.Second,
		ReadTimeout:  o.InsertTimeout,
		MaxOpenConns: 4,
		MaxIdleConns: 2,
		Compression:  &clickhouse.Compression{Method: clickhouse.CompressionLZ4},
	})
	if err != nil {
		sp.close()
		return nil, fmt.Errorf("chwriter: open %s: %w", o.Addr, err)
	}
	base, cancel := context.WithCancel(context.Background())
	w := &Writer{
		o: o, log: o.Logger, conn: conn,
		in:   make(chan extproc.Record, o.QueueSize),
		base: base, cancel: cancel,
		wake:        make(chan struct{}, 1),
		logDone:     make(chan struct{}),
		insDone:     make(chan struct{}),
		spool:       sp,
		pendingRows: sp.openRows,
	}
	w.updateSpoolGauges()
	if err := w.registerMetrics(); err != nil {
		cancel()
		conn.Close()
		sp.close()
		return nil, err
	}

	sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
	err = w.ensureSchema(sctx)
	scancel()
	if err != nil {
		w.log.Warn("clickhouse unavailable at start: spooling telemetry until it answers", "addr", o.Addr, "err", err)
	} else if !sp.pending() {
		w.healthy = true
	}
	go w.logger()
	go w.inserter()
	return w, nil
}

// Write queues r for insertion and returns at once. When the queue is full
// or the Writer is closed, r is dropped and counted. A record without a
// RequestID gets a random one, since replay deduplicates by request id;
// non-finite durations or costs are stored as 0.
func (w *Writer) Write(r extproc.Record) {
	w.closeMu.RLock()
	defer w.closeMu.RUnlock()
	if w.closed {
		w.drop(1, "writer closed")
		return
	}
	if r.RequestID == "" {
		r.RequestID = randomID()
	}
	for _, f := range []*float64{&r.TTFTMs, &r.TotalMs, &r.ITLMeanMs, &r.ITLP50Ms, &r.ITLP95Ms, &r.ITLMaxMs, &r.CostUSD} {
		if math.IsNaN(*f) || math.IsInf(*f, 0) {
			*f = 0
		}
	}
	select {
	case w.in <- r:
	default:
		w.drop(1, "queue full")
	}
}

// Close stops accepting records, spools what is queued, inserts what the
// spool holds while ClickHouse is live and ctx lasts, and releases the
// connection and the spool. What ClickHouse did not take is inserted by the
// next Writer on the same SpoolDir.
func (w *Writer) Close(ctx context.Context) error {
	w.closeMu.Lock()
	if w.closed {
		w.closeMu.Unlock()
		return ErrClosed
	}
	w.closed = true
	w.closeCtx = ctx
	close(w.in)
	w.closeMu.Unlock()

	stop := make(chan struct{})
	go func() { // ctx bounds an insert already under way, too
		select {
		case <-ctx.Done():
			w.cancel()
		case <-stop:
		}
	}()
	<-w.logDone
	<-w.insDone
	close(stop)
	w.cancel()
	for _, c := range w.collectors {
		w.o.Registerer.Unregister(c)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return errors.Join(w.spool.close(), w.conn.Close())
}

// Stats returns the writer's counters.
func (w *Writer) Stats() Stats {
	w.mu.Lock()
	live := w.healthy
	w.mu.Unlock()
	return Stats{
		Logged:         w.logged.Load(),
		Written:        w.written.Load(),
		Spooled:        w.spooled.Load(),
		Dropped:        w.dropped.Load(),
		Replayed:       w.replayed.Load(),
		ReplaySkipped:  w.skipped.Load(),
		SpoolBytes:     w.spoolBytes.Load(),
		SpoolPending:   w.spoolPending.Load(),
		ClickHouseLive: live,
	}
}

// DropPartitionsBefore drops the daily partitions of both tables whose rows
// are all from days before the day of before (UTC), and returns how many it
// dropped. This is retention on servers without TTL.
func (w *Writer) DropPartitionsBefore(ctx context.Context, before time.Time) (int, error) {
	return dropPartitionsBefore(ctx, w.conn, w.o.Database, before)
}

// logger is the write-ahead step. It takes a record from the queue, with
// every record queued behind it (up to BatchSize), appends them to the
// spool as one frame and fsyncs it: group commit, so while one disk write
// runs the next group gathers and a burst costs a few disk writes, not one
// each. Only then are the records left to the inserter. It runs on its own
// goroutine because Write must not wait for the disk, nor a slow disk for
// ClickHouse.
func (w *Writer) logger() {
	defer close(w.logDone)
	for {
		r, ok := <-w.in
		if !ok {
			return
		}
		group := append(make([]extproc.Record, 0, 16), r) // kept in mem: never reused
		open := true
	gather:
		for len(group) < w.o.BatchSize {
			select {
			case r, ok := <-w.in:
				if !ok {
					open = false
					break gather
				}
				group = append(group, r)
			default:
				break gather
			}
		}
		w.spoolGroup(group)
		if !open {
			return
		}
	}
}

// spoolGroup appends one group to the spool and wakes the inserter when a
// full batch waits.
func (w *Writer) spoolGroup(group []extproc.Record) {
	w.mu.Lock()
	size := w.spool.size
	err := w.spool.append(group)
	live := w.healthy
	full := false
	if err == nil {
		w.pendingRows += int64(len(group))
		full = w.pendingRows >= int64(w.o.BatchSize)
		w.mem = append(w.mem, memFrame{recs: group, bytes: w.spool.size - size})
		w.memBytes += w.spool.size - size
		w.memRows += len(group)
		w.trimMemLocked()
	}
	w.updateSpoolGaugesLocked()
	w.mu.Unlock()
	switch {
	case errors.Is(err, ErrSpoolFull):
		w.drop(len(group), "spool full")
	case err != nil:
		w.log.Error("telemetry spool append failed", "err", err)
		w.drop(len(group), "spool error")
	default:
		w.logged.Add(uint64(len(group)))
		if !live {
			w.spooled.Add(uint64(len(group)))
		}
		if full {
			w.kick()
		}
	}
}

func (w *Writer) kick() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// inserter moves the spool into ClickHouse, oldest first: a full batch as
// soon as the logger reports one, whatever waits every FlushInterval. When
// an insert fails it retries with backoff, creates the schema if needed and
// replays the backlog with deduplication before it calls ClickHouse live
// again. When the logger is done (Close) it inserts what is left if
// ClickHouse is live. It also runs partition retention.
func (w *Writer) inserter() {
	defer close(w.insDone)
	tick := time.NewTicker(w.o.FlushInterval)
	defer tick.Stop()
	var retention <-chan time.Time
	if w.o.RetentionDays > 0 {
		t := time.NewTicker(time.Hour)
		defer t.Stop()
		retention = t.C
	}
	backoff := w.o.RetryMin
	var retry <-chan time.Time
	if !w.live() {
		retry = time.After(0)
	}
	for {
		mode := insertDue
		select {
		case <-w.base.Done():
			return
		case <-w.logDone:
			if w.live() {
				if err := w.insertPending(w.closeCtx, insertAll); err != nil {
					w.log.Warn("telemetry left in the spool for the next start", "err", err, "dir", w.o.SpoolDir)
				}
			}
			return
		case <-retention:
			w.applyRetention()
			continue
		case <-w.wake:
			mode = insertFull
		case <-tick.C:
		case <-retry:
			retry = nil
		}
		if retry != nil {
			continue // ClickHouse is away: only the backoff timer tries again
		}
		if err := w.insertPending(w.base, mode); err != nil {
			if w.base.Err() != nil {
				return
			}
			w.log.Debug("clickhouse still unavailable", "err", err, "retry_in", backoff)
			retry = time.After(backoff)
			backoff = min(2*backoff, w.o.RetryMax)
			continue
		}
		backoff = w.o.RetryMin
	}
}

// memFrame is one spooled frame's records and its length in the log.
type memFrame struct {
	recs  []extproc.Record
	bytes int64
}

// takeMemLocked returns, when the frames from byte from of the log are
// still in mem, as many of them as hold maxRows records, and the offset
// after them; ok is false when from lies before mem.
func (w *Writer) takeMemLocked(from int64, maxRows int) (batch []extproc.Record, end int64, ok bool) {
	pos := w.spool.size - w.memBytes
	i := 0
	for ; i < len(w.mem) && pos < from; i++ {
		pos += w.mem[i].bytes
	}
	if pos != from || i == len(w.mem) {
		return nil, from, false
	}
	for ; i < len(w.mem) && len(batch) < maxRows; i++ {
		batch = append(batch, w.mem[i].recs...)
		pos += w.mem[i].bytes
	}
	return batch, pos, true
}

// trimMemLocked gives up frames of mem that are no longer (or never were
// kept) beyond the spool's unconsumed bytes, or beyond QueueSize rows.
func (w *Writer) trimMemLocked() {
	pending := w.spool.pendingBytes()
	for len(w.mem) > 0 && (w.memBytes > pending || w.memRows > w.o.QueueSize) {
		w.memBytes -= w.mem[0].bytes
		w.memRows -= len(w.mem[0].recs)
		w.mem[0] = memFrame{}
		w.mem = w.mem[1:]
	}
}

func (w *Writer) live() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.healthy
}

// insertMode says how much of the spool one call of insertPending inserts.
type insertMode int

const (
	// insertFull inserts full batches only: the logger reported one.
	insertFull insertMode = iota
	// insertDue inserts what was spooled when the call began (the flush
	// tick), so steady traffic is not chased in small batches: each insert
	// costs ClickHouse a new part.
	insertDue
	// insertAll inserts until the spool is empty (Close).
	insertAll
)

// insertPending inserts the spool's records batch by batch, as mode says,
// and commits each batch's end. It returns the first error; the batch that
// failed stays in the spool, marked for deduplication. A crash anywhere
// resumes at the batch not yet committed, and deduplication makes its
// second insert a no-op, so each row lands once. When ClickHouse was away it
// first makes sure of the schema, replays the whole backlog whatever the
// mode, and then calls ClickHouse live.
func (w *Writer) insertPending(ctx context.Context, mode insertMode) error {
	live := w.live()
	budget := int64(math.MaxInt64)
	if live && mode == insertDue {
		w.mu.Lock()
		budget = max(w.pendingRows, 1) // a miscount must not strand rows
		w.mu.Unlock()
	}
	if !live {
		sctx, cancel := context.WithTimeout(ctx, w.o.InsertTimeout)
		err := w.ensureSchema(sctx)
		cancel()
		if err != nil {
			return err
		}
	}
	for {
		// The inserter alone commits, so the frames in [from, to) stay as
		// they are while it reads them without the lock.
		w.mu.Lock()
		f, from, to, pending, uncertain := w.spool.f, w.spool.offset, w.spool.size, w.pendingRows, w.spool.uncertain
		batch, end, inMem := w.takeMemLocked(from, w.o.BatchSize)
		w.mu.Unlock()
		if from >= to {
			if !live {
				w.mu.Lock()
				w.healthy = true
				w.mu.Unlock()
				w.log.Info("clickhouse live: telemetry spool replayed", "addr", w.o.Addr)
			}
			return nil
		}
		if budget <= 0 || (live && mode == insertFull && pending < int64(w.o.BatchSize)) {
			return nil
		}
		var err error
		if !inMem {
			batch, end, err = readFrames(f, from, to, w.o.BatchSize)
		}
		if err != nil {
			// Frames are validated when the spool opens and written whole,
			// so this is corruption under a running process: keep what
			// ClickHouse has, count nothing twice, and go on after it.
			w.log.Error("telemetry spool corrupt: discarding its unreplayed rest", "err", err, "bytes", to-from)
			w.mu.Lock()
			err = w.spool.commit(to)
			w.pendingRows = 0
			w.trimMemLocked()
			w.updateSpoolGaugesLocked()
			w.mu.Unlock()
			if err != nil {
				return err
			}
			continue
		}
		budget -= int64(len(batch))
		dedup := !live || from < uncertain
		ictx, cancel := context.WithTimeout(ctx, w.o.InsertTimeout)
		n, skipped, err := w.insert(ictx, batch, dedup)
		cancel()
		if err != nil {
			w.mu.Lock()
			w.healthy = false
			w.spool.uncertain = max(w.spool.uncertain, end)
			w.mu.Unlock()
			if live {
				w.log.Warn("clickhouse insert failed: telemetry waits in the spool until it answers", "rows", len(batch), "err", err)
			}
			return err
		}
		w.mu.Lock()
		err = w.spool.commit(end)
		if err != nil {
			w.healthy = false // the offset did not move: replay, with deduplication
			w.spool.uncertain = max(w.spool.uncertain, end)
		}
		w.pendingRows = max(0, w.pendingRows-int64(len(batch)))
		w.trimMemLocked()
		w.updateSpoolGaugesLocked()
		w.mu.Unlock()
		if dedup {
			w.replayed.Add(uint64(n))
			w.skipped.Add(uint64(skipped))
		} else {
			w.written.Add(uint64(n))
		}
		if err != nil {
			w.log.Error("telemetry spool commit failed", "err", err)
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
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

func (w *Writer) applyRetention() {
	w.mu.Lock()
	live, v := w.healthy, w.version
	w.mu.Unlock()
	if !live || v.atLeast(19, 6) { // TTL does it there
		return
	}
	ctx, cancel := context.WithTimeout(w.base, w.o.InsertTimeout)
	defer cancel()
	before := time.Now().AddDate(0, 0, -w.o.RetentionDays)
	if n, err := w.DropPartitionsBefore(ctx, before); err != nil {
		w.log.Warn("telemetry retention failed", "err", err)
	} else if n > 0 {
		w.log.Info("telemetry retention dropped partitions", "partitions", n, "before", day(before))
	}
}

// insert writes batch into the requests table and its captured records into
// the captures table. With dedup, rows whose request_id is already in a
// table are skipped, which makes replaying a batch idempotent. It returns
// the request rows inserted and skipped.
func (w *Writer) insert(ctx context.Context, batch []extproc.Record, dedup bool) (int, int, error) {
	rows, err := w.insertTable(ctx, requestsTable, batch, dedup)
	if err != nil {
		return 0, 0, err
	}
	var caps []extproc.Record
	for i := range batch {
		if batch[i].Captured {
			caps = append(caps, batch[i])
		}
	}
	if len(caps) > 0 {
		if _, err := w.insertTable(ctx, capturesTable, caps, dedup); err != nil {
			return 0, 0, err
		}
	}
	return rows, len(batch) - rows, nil
}

func (w *Writer) insertTable(ctx context.Context, t table, batch []extproc.Record, dedup bool) (int, error) {
	if dedup {
		have, err := existingIDs(ctx, w.conn, w.o.Database, t.name, batch)
		if err != nil {
			return 0, err
		}
		if len(have) > 0 {
			kept := make([]extproc.Record, 0, len(batch))
			for i := range batch {
				if !have[batch[i].RequestID] {
					kept = append(kept, batch[i])
				}
			}
			batch = kept
		}
	}
	if len(batch) == 0 {
		return 0, nil
	}
	b, err := w.conn.PrepareBatch(ctx, t.insertSQL(w.o.Database))
	if err != nil {
		return 0, fmt.Errorf("prepare insert into %s: %w", t.name, err)
	}
	vals := make([]any, len(t.cols))
	for i := range batch {
		for j, c := range t.cols {
			vals[j] = c.value(&batch[i])
		}
		if err := b.Append(vals...); err != nil {
			_ = b.Abort()
			return 0, fmt.Errorf("append to %s batch: %w", t.name, err)
		}
	}
	if err := b.Send(); err != nil {
		return 0, fmt.Errorf("insert into %s: %w", t.name, err)
	}
	return len(batch), nil
}

// dedupChunk keeps each id lookup well under ClickHouse's default
// max_query_size of 256 KiB.
const dedupChunk = 1000

// existingIDs returns which request ids of batch are already in the table,
// looking only at the daily partitions the batch covers.
func existingIDs(ctx context.Context, conn driver.Conn, db, tbl string, batch []extproc.Record) (map[string]bool, error) {
	have := map[string]bool{}
	lo, hi := day(batch[0].Time), day(batch[0].Time)
	for i := range batch {
		d := day(batch[i].Time)
		if d.Before(lo) {
			lo = d
		}
		if d.After(hi) {
			hi = d
		}
	}
	q := fmt.Sprintf("SELECT request_id FROM %s.%s WHERE date >= %s AND date <= %s AND request_id IN ?", db, tbl, dateLit(lo), dateLit(hi))
	for start := 0; start < len(batch); start += dedupChunk {
		end := min(start+dedupChunk, len(batch))
		ids := make([]any, 0, end-start)
		for i := start; i < end; i++ {
			ids = append(ids, batch[i].RequestID)
		}
		rows, err := conn.Query(ctx, q, clickhouse.GroupSet{Value: ids})
		if err != nil {
			return nil, fmt.Errorf("look up replayed ids in %s: %w", tbl, err)
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return nil, fmt.Errorf("look up replayed ids in %s: %w", tbl, err)
			}
			have[id] = true
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("look up replayed ids in %s: %w", tbl, err)
		}
	}
	return have, nil
}

// drop counts n lost rows and logs at most every 10 s, with the count
// since the last line, so a flood of drops cannot flood the log.
func (w *Writer) drop(n int, reason string) {
	total := w.dropped.Add(uint64(n))
	now := time.Now().UnixNano()
	last := w.lastDropLog.Load()
	if now-last < int64(10*time.Second) || !w.lastDropLog.CompareAndSwap(last, now) {
		return
	}
	prev := w.droppedLogged.Swap(total)
	w.log.Warn("telemetry dropped", "reason", reason, "rows", total-prev, "total", total)
}

func (w *Writer) updateSpoolGauges() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.updateSpoolGaugesLocked()
}

func (w *Writer) updateSpoolGaugesLocked() {
	w.spoolBytes.Store(w.spool.size)
	w.spoolPending.Store(w.spool.pendingBytes())
}

func (w *Writer) registerMetrics() error {
	if w.o.Registerer == nil {
		return nil
	}
	counter := func(name, help string, v *atomic.Uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(v.Load()) })
	}
	w.collectors = []prometheus.Collector{
		counter("llmcanary_telemetry_logged_total", "Request rows made durable in the on-disk spool before they are inserted.", &w.logged),
		counter("llmcanary_telemetry_written_total", "Request rows inserted into ClickHouse in the normal course.", &w.written),
		counter("llmcanary_telemetry_spooled_total", "Request rows spooled while ClickHouse was away, to be replayed.", &w.spooled),
		counter("llmcanary_telemetry_dropped_total", "Request rows lost: queue full, spool full or writer closed.", &w.dropped),
		counter("llmcanary_telemetry_replayed_total", "Request rows inserted into ClickHouse from the spool.", &w.replayed),
		counter("llmcanary_telemetry_replay_skipped_total", "Spooled request rows found already in ClickHouse on replay.", &w.skipped),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "llmcanary_telemetry_spool_bytes", Help: "Size of the telemetry spool file."},
			func() float64 { return float64(w.spoolBytes.Load()) }),
	}
	for i, c := range w.collectors {
		if err := w.o.Registerer.Register(c); err != nil {
			for _, r := range w.collectors[:i] {
				w.o.Registerer.Unregister(r)
			}
			return fmt.Errorf("chwriter: register metrics: %w", err)
		}
	}
	return nil
}

func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
