// Package chwriter writes extproc.Records into ClickHouse in batches. Write
// never blocks: records wait in a bounded queue, a background loop inserts
// them by size and time, and while ClickHouse is away batches go to an
// on-disk spool that is replayed, in order and without duplicates, when it
// comes back. What cannot be kept (queue full, spool at its cap) is dropped
// and counted.
package chwriter

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
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
	// FlushInterval is the longest a record waits in a partial batch;
	// default 1 s.
	FlushInterval time.Duration
	// QueueSize bounds the records waiting in memory; default 20×BatchSize.
	// Write drops (and counts) records beyond it.
	QueueSize int
	// SpoolDir holds the spool of batches ClickHouse did not take. Required.
	SpoolDir string
	// SpoolMaxBytes caps the spool file; default 1 GiB. Batches beyond it
	// are dropped and counted.
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
// rows inserted into wire.TableRequests, directly or from the spool.
type Stats struct {
	Written        uint64
	Spooled        uint64
	Dropped        uint64
	Replayed       uint64
	ReplaySkipped  uint64 // spooled rows already in ClickHouse, not inserted again
	SpoolBytes     int64  // size of the spool file
	SpoolPending   int64  // bytes of the spool not yet replayed
	ClickHouseLive bool   // the last insert succeeded and the spool is empty
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
	closeCtx context.Context // read by the loop after in is closed

	base     context.Context // cancelled by Close to stop the replayer
	cancel   context.CancelFunc
	wake     chan struct{}
	loopDone chan struct{}
	repDone  chan struct{}

	mu          sync.Mutex // guards spool, healthy, schemaReady, version
	spool       *spool
	healthy     bool
	schemaReady bool
	version     serverVersion

	written, spooled, dropped, replayed, skipped atomic.Uint64
	droppedLogged                                atomic.Uint64
	lastDropLog                                  atomic.Int64
	spoolBytes, spoolPending                     atomic.Int64

	collectors []prometheus.Collector
}

// New opens the spool, connects to ClickHouse and creates or migrates the
// schema. It succeeds when ClickHouse is down: records are then spooled and
// the schema is created once the server answers.
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
		wake:     make(chan struct{}, 1),
		loopDone: make(chan struct{}),
		repDone:  make(chan struct{}),
		spool:    sp,
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
	go w.loop()
	go w.replayer()
	if !w.healthy {
		w.kick()
	}
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

// Close stops accepting records, inserts what is queued (or spools it when
// ClickHouse is away or ctx ends first) and releases the connection and the
// spool. Spooled batches are replayed by the next Writer on the same
// SpoolDir.
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

	<-w.loopDone
	w.cancel()
	<-w.repDone
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

// loop batches queued records by size and time. It is the only appender to
// the spool, which keeps batches in arrival order.
func (w *Writer) loop() {
	defer close(w.loopDone)
	batch := make([]extproc.Record, 0, w.o.BatchSize)
	tick := time.NewTicker(w.o.FlushInterval)
	defer tick.Stop()
	for {
		select {
		case r, ok := <-w.in:
			if !ok {
				if len(batch) > 0 {
					w.flush(w.closeCtx, batch)
				}
				return
			}
			batch = append(batch, r)
			if len(batch) >= w.o.BatchSize {
				w.flush(w.base, batch)
				batch = make([]extproc.Record, 0, w.o.BatchSize)
			}
		case <-tick.C:
			if len(batch) > 0 {
				w.flush(w.base, batch)
				batch = make([]extproc.Record, 0, w.o.BatchSize)
			}
		}
	}
}

// flush inserts batch directly when ClickHouse is live and nothing older
// waits in the spool; otherwise, or when the insert fails, it spools batch
// behind the older ones and wakes the replayer.
func (w *Writer) flush(ctx context.Context, batch []extproc.Record) {
	w.mu.Lock()
	direct := w.healthy && !w.spool.pending()
	w.mu.Unlock()
	if direct && ctx.Err() == nil {
		ictx, cancel := context.WithTimeout(ctx, w.o.InsertTimeout)
		n, _, err := w.insert(ictx, batch, false)
		cancel()
		if err == nil {
			w.written.Add(uint64(n))
			return
		}
		w.log.Warn("clickhouse insert failed: spooling telemetry until it answers", "rows", len(batch), "err", err)
		w.mu.Lock()
		w.healthy = false
		w.mu.Unlock()
	}
	w.mu.Lock()
	err := w.spool.append(batch)
	w.updateSpoolGaugesLocked()
	w.mu.Unlock()
	switch {
	case errors.Is(err, ErrSpoolFull):
		w.drop(len(batch), "spool full")
	case err != nil:
		w.log.Error("telemetry spool append failed", "err", err)
		w.drop(len(batch), "spool error")
	default:
		w.spooled.Add(uint64(len(batch)))
	}
	w.kick()
}

func (w *Writer) kick() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// replayer brings ClickHouse back into use after an outage: it retries with
// backoff, creates the schema if needed, replays the spool oldest first and
// then marks ClickHouse live. It also runs partition retention.
func (w *Writer) replayer() {
	defer close(w.repDone)
	backoff := w.o.RetryMin
	var retention <-chan time.Time
	if w.o.RetentionDays > 0 {
		t := time.NewTicker(time.Hour)
		defer t.Stop()
		retention = t.C
	}
	for {
		w.mu.Lock()
		live := w.healthy
		w.mu.Unlock()
		var retry <-chan time.Time
		if !live {
			err := w.recover(w.base)
			if err == nil {
				backoff = w.o.RetryMin
				continue
			}
			if w.base.Err() != nil {
				return
			}
			w.log.Debug("clickhouse still unavailable", "err", err, "retry_in", backoff)
			retry = time.After(backoff)
			backoff = min(2*backoff, w.o.RetryMax)
		}
		select {
		case <-w.base.Done():
			return
		case <-w.wake:
		case <-retry:
		case <-retention:
			w.applyRetention()
		}
	}
}

// recover replays the whole spool and marks ClickHouse live, or returns the
// first error. Progress is committed after each batch, so an error or a
// crash resumes at the batch that failed.
func (w *Writer) recover(ctx context.Context) error {
	sctx, cancel := context.WithTimeout(ctx, w.o.InsertTimeout)
	err := w.ensureSchema(sctx)
	cancel()
	if err != nil {
		return err
	}
	for {
		w.mu.Lock()
		batch, end, err := w.spool.next()
		if err == io.EOF {
			w.healthy = true
			w.mu.Unlock()
			w.log.Info("clickhouse live: telemetry spool replayed", "addr", w.o.Addr)
			return nil
		}
		if err != nil {
			// Frames are validated when the spool opens and written whole,
			// so this is corruption under a running process: keep what
			// ClickHouse has, count nothing twice, and start a fresh spool.
			w.log.Error("telemetry spool corrupt: discarding its unreplayed rest", "err", err, "bytes", w.spool.pendingBytes())
			err = w.spool.commit(w.spool.size)
			w.updateSpoolGaugesLocked()
			w.mu.Unlock()
			if err != nil {
				return err
			}
			continue
		}
		w.mu.Unlock()

		ictx, cancel := context.WithTimeout(ctx, w.o.InsertTimeout)
		n, skipped, err := w.insert(ictx, batch, true)
		cancel()
		if err != nil {
			return err
		}
		w.mu.Lock()
		err = w.spool.commit(end)
		w.updateSpoolGaugesLocked()
		w.mu.Unlock()
		if err != nil {
			return err
		}
		w.replayed.Add(uint64(n))
		w.skipped.Add(uint64(skipped))
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
		counter("llmcanary_telemetry_written_total", "Request rows inserted into ClickHouse directly.", &w.written),
		counter("llmcanary_telemetry_spooled_total", "Request rows written to the on-disk spool while ClickHouse was away.", &w.spooled),
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
