package chwriter

import (
	"context"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmcanary/llmcanary/extproc"
)

// rowKind says how the writer stores rows of one type: in which tables,
// under which key, and under which names it counts them.
type rowKind[R any] struct {
	// tables hold the rows; the primary ones hold each row once and are
	// the ones the writer's counts (Stats) are about; the first names the
	// kind in metrics.
	tables []table[R]
	// id points to the row's request id, the key replay deduplicates by.
	id func(r *R) *string
	// time is when the row's request started; it picks the partition.
	time func(r *R) time.Time
	// sanitize makes a row storable (no NaN in a Float64 column).
	sanitize func(r *R)
	// subdir is the row type's spool directory inside Options.SpoolDir;
	// "" is SpoolDir itself.
	subdir string
	// noun names the rows in logs; metric prefixes the metric names.
	noun, metric string
}

var requestRows = rowKind[extproc.Record]{
	tables: []table[extproc.Record]{requestsTable, capturesTable, shadowTable},
	id:     func(r *extproc.Record) *string { return &r.RequestID },
	time:   func(r *extproc.Record) time.Time { return r.Time },
	sanitize: func(r *extproc.Record) {
		for _, f := range []*float64{&r.TTFTMs, &r.TotalMs, &r.ITLMeanMs, &r.ITLP50Ms, &r.ITLP95Ms, &r.ITLMaxMs, &r.CostUSD, &r.SampleRate} {
			finite(f)
		}
	},
	noun:   "telemetry",
	metric: "llmcanary_telemetry",
}

var requestLogRows = rowKind[extproc.LogEntry]{
	tables: []table[extproc.LogEntry]{requestLogTable},
	id:     func(e *extproc.LogEntry) *string { return &e.RequestID },
	time:   func(e *extproc.LogEntry) time.Time { return e.Time },
	sanitize: func(e *extproc.LogEntry) {
		finite(&e.DurationMs)
		finite(&e.SampleRate)
	},
	subdir: "request_log",
	noun:   "request log",
	metric: "llmcanary_request_log",
}

// finite stores a non-finite value as 0.
func finite(f *float64) {
	if math.IsNaN(*f) || math.IsInf(*f, 0) {
		*f = 0
	}
}

// pipe carries the rows of one kind from Write to ClickHouse: a bounded
// queue, the logger goroutine that appends them to the kind's spool (the
// write-ahead log), and the inserter goroutine that sends the spool to
// ClickHouse, replaying it after an outage. Each kind has its own, so a
// burst of one never delays or drops the other.
type pipe[R any] struct {
	w    *Writer
	sh   *shard
	kind rowKind[R]

	in       chan R
	closeMu  sync.RWMutex
	closed   bool
	closeCtx context.Context // read by the inserter after the logger is done

	base    context.Context // cancelled by close to stop the inserter
	cancel  context.CancelFunc
	wake    chan struct{} // the logger tells the inserter a full batch waits
	logDone chan struct{} // closed when the logger has spooled the last row
	insDone chan struct{}

	// mu guards the spool, healthy, pendingRows and mem. The logger is
	// the spool's only appender and the inserter its only reader and
	// committer.
	mu          sync.Mutex
	spool       *spool[R]
	healthy     bool
	pendingRows int64 // rows in the spool not yet in ClickHouse
	// mem keeps the rows of the spool's last frames as the logger
	// appended them, so the inserter need not read and decode them back:
	// always a suffix of the log (the frames ending at its end), its
	// oldest frames given up beyond QueueSize rows. Being a suffix, it
	// needs no offsets and survives truncation and compaction.
	mem      []memFrame[R]
	memBytes int64
	memRows  int

	logged, written, spooled, dropped, replayed, skipped atomic.Uint64
	droppedLogged                                        atomic.Uint64
	lastDropLog                                          atomic.Int64
	spoolBytes, spoolPending                             atomic.Int64

	collectors []prometheus.Collector
}

// openPipe opens the kind's spool and registers its metrics; start runs it.
func openPipe[R any](w *Writer, sh *shard, kind rowKind[R]) (*pipe[R], error) {
	dir := filepath.Join(w.spoolDir(sh), kind.subdir)
	sp, discarded, err := openSpool[R](dir, w.o.SpoolMaxBytes)
	if err != nil {
		return nil, err
	}
	if discarded > 0 {
		w.log.Warn(kind.noun+" spool: discarded a torn tail left by a crash", "bytes", discarded, "dir", dir)
	}
	base, cancel := context.WithCancel(context.Background())
	p := &pipe[R]{
		w: w, sh: sh, kind: kind,
		in:   make(chan R, w.o.QueueSize),
		base: base, cancel: cancel,
		wake:        make(chan struct{}, 1),
		logDone:     make(chan struct{}),
		insDone:     make(chan struct{}),
		spool:       sp,
		pendingRows: sp.openRows,
	}
	p.updateSpoolGauges()
	if err := p.registerMetrics(); err != nil {
		cancel()
		sp.close()
		return nil, err
	}
	return p, nil
}

// abandon releases a pipe that was opened and never started.
func (p *pipe[R]) abandon() {
	p.cancel()
	for _, c := range p.collectors {
		p.w.o.Registerer.Unregister(c)
	}
	p.spool.close()
}

// start runs the logger and the inserter; live says ClickHouse answered
// and has the schema.
func (p *pipe[R]) start(live bool) {
	p.healthy = live && !p.spool.pending()
	go p.logger()
	go p.inserter()
}

// write queues r and returns at once; see Writer.Write.
func (p *pipe[R]) write(r R) {
	p.closeMu.RLock()
	defer p.closeMu.RUnlock()
	if p.closed {
		p.drop(1, "writer closed")
		return
	}
	if id := p.kind.id(&r); *id == "" {
		*id = randomID()
	}
	p.kind.sanitize(&r)
	select {
	case p.in <- r:
	default:
		p.drop(1, "queue full")
	}
}

// close stops taking rows, spools what is queued and inserts what the
// spool holds while ClickHouse is live and ctx lasts; see Writer.Close.
func (p *pipe[R]) close(ctx context.Context) error {
	p.closeMu.Lock()
	if p.closed {
		p.closeMu.Unlock()
		return ErrClosed
	}
	p.closed = true
	p.closeCtx = ctx
	close(p.in)
	p.closeMu.Unlock()

	stop := make(chan struct{})
	go func() { // ctx bounds an insert already under way, too
		select {
		case <-ctx.Done():
			p.cancel()
		case <-stop:
		}
	}()
	<-p.logDone
	<-p.insDone
	close(stop)
	p.cancel()
	for _, c := range p.collectors {
		p.w.o.Registerer.Unregister(c)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.spool.close()
}

func (p *pipe[R]) stats() Stats {
	p.mu.Lock()
	live := p.healthy
	p.mu.Unlock()
	return Stats{
		Logged:         p.logged.Load(),
		Written:        p.written.Load(),
		Spooled:        p.spooled.Load(),
		Dropped:        p.dropped.Load(),
		Replayed:       p.replayed.Load(),
		ReplaySkipped:  p.skipped.Load(),
		SpoolBytes:     p.spoolBytes.Load(),
		SpoolPending:   p.spoolPending.Load(),
		ClickHouseLive: live,
	}
}

// logger is the write-ahead step. It takes a row from the queue, with
// every row that arrives within CommitDelay (up to BatchSize), appends
// them to the spool as one frame and fsyncs it: group commit, so a burst
// costs a few disk writes, not one each. Only then are the rows left to
// the inserter. It runs on its own goroutine because Write must not wait
// for the disk, nor a slow disk for ClickHouse.
func (p *pipe[R]) logger() {
	defer close(p.logDone)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		r, ok := <-p.in
		if !ok {
			return
		}
		group := append(make([]R, 0, 16), r) // kept in mem: never reused
		open := true
		var deadline <-chan time.Time
		if d := p.w.o.CommitDelay; d > 0 {
			timer.Reset(d)
			deadline = timer.C
		}
	gather:
		for len(group) < p.w.o.BatchSize {
			var r R
			var ok bool
			if deadline == nil {
				select {
				case r, ok = <-p.in:
				default:
					break gather
				}
			} else {
				select {
				case r, ok = <-p.in:
				case <-deadline:
					break gather
				}
			}
			if !ok {
				open = false
				break
			}
			group = append(group, r)
		}
		timer.Stop() // since Go 1.23 a stopped timer delivers nothing stale
		p.spoolGroup(group)
		if !open {
			return
		}
	}
}

// spoolGroup appends one group to the spool and wakes the inserter when a
// full batch waits.
func (p *pipe[R]) spoolGroup(group []R) {
	p.mu.Lock()
	size := p.spool.size
	err := p.spool.append(group)
	live := p.healthy
	full := false
	if err == nil {
		p.pendingRows += int64(len(group))
		full = p.pendingRows >= int64(p.w.o.BatchSize)
		p.mem = append(p.mem, memFrame[R]{recs: group, bytes: p.spool.size - size})
		p.memBytes += p.spool.size - size
		p.memRows += len(group)
		p.trimMemLocked()
	}
	p.updateSpoolGaugesLocked()
	p.mu.Unlock()
	switch {
	case errors.Is(err, ErrSpoolFull):
		p.drop(len(group), "spool full")
	case err != nil:
		p.w.log.Error(p.kind.noun+" spool append failed", "err", err)
		p.drop(len(group), "spool error")
	default:
		p.logged.Add(uint64(len(group)))
		if !live {
			p.spooled.Add(uint64(len(group)))
		}
		if full {
			p.kick()
		}
	}
}

func (p *pipe[R]) kick() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// inserter moves the spool into ClickHouse, oldest first: a full batch as
// soon as the logger reports one, whatever waits every FlushInterval. When
// an insert fails it retries with backoff, creates the schema if needed and
// replays the backlog with deduplication before it calls ClickHouse live
// again. When the logger is done (close) it inserts what is left if
// ClickHouse is live. The request rows' inserter also runs partition
// retention, for every table.
func (p *pipe[R]) inserter() {
	defer close(p.insDone)
	tick := time.NewTicker(p.w.o.FlushInterval)
	defer tick.Stop()
	var retention <-chan time.Time
	if p.w.o.RetentionDays > 0 && p.kind.subdir == "" {
		t := time.NewTicker(time.Hour)
		defer t.Stop()
		retention = t.C
	}
	backoff := p.w.o.RetryMin
	var retry <-chan time.Time
	if !p.live() {
		retry = time.After(0)
	}
	for {
		mode := insertDue
		select {
		case <-p.base.Done():
			return
		case <-p.logDone:
			if p.live() {
				if err := p.insertPending(p.closeCtx, insertAll); err != nil {
					p.w.log.Warn(p.kind.noun+" left in the spool for the next start", "err", err, "dir", p.w.spoolDir(p.sh))
				}
			}
			return
		case <-retention:
			p.w.applyRetention(p.base, p.sh, p.live())
			continue
		case <-p.wake:
			mode = insertFull
		case <-tick.C:
		case <-retry:
			retry = nil
		}
		if retry != nil {
			continue // ClickHouse is away: only the backoff timer tries again
		}
		if err := p.insertPending(p.base, mode); err != nil {
			if p.base.Err() != nil {
				return
			}
			p.w.log.Debug("clickhouse still unavailable", "addr", p.sh.addr, "rows", p.kind.noun, "err", err, "retry_in", backoff)
			retry = time.After(backoff)
			backoff = min(2*backoff, p.w.o.RetryMax)
			continue
		}
		backoff = p.w.o.RetryMin
	}
}

// memFrame is one spooled frame's rows and its length in the log.
type memFrame[R any] struct {
	recs  []R
	bytes int64
}

// takeMemLocked returns, when the frames from byte from of the log are
// still in mem, as many of them as hold maxRows rows, and the offset
// after them; ok is false when from lies before mem.
func (p *pipe[R]) takeMemLocked(from int64, maxRows int) (batch []R, end int64, ok bool) {
	pos := p.spool.size - p.memBytes
	i := 0
	for ; i < len(p.mem) && pos < from; i++ {
		pos += p.mem[i].bytes
	}
	if pos != from || i == len(p.mem) {
		return nil, from, false
	}
	for ; i < len(p.mem) && len(batch) < maxRows; i++ {
		batch = append(batch, p.mem[i].recs...)
		pos += p.mem[i].bytes
	}
	return batch, pos, true
}

// trimMemLocked gives up frames of mem that are no longer (or never were
// kept) beyond the spool's unconsumed bytes, or beyond QueueSize rows.
func (p *pipe[R]) trimMemLocked() {
	pending := p.spool.pendingBytes()
	for len(p.mem) > 0 && (p.memBytes > pending || p.memRows > p.w.o.QueueSize) {
		p.memBytes -= p.mem[0].bytes
		p.memRows -= len(p.mem[0].recs)
		p.mem[0] = memFrame[R]{}
		p.mem = p.mem[1:]
	}
}

func (p *pipe[R]) live() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.healthy
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
	// insertAll inserts until the spool is empty (close).
	insertAll
)

// insertPending inserts the spool's rows batch by batch, as mode says,
// and commits each batch's end. It returns the first error; the batch that
// failed stays in the spool, marked for deduplication. A crash anywhere
// resumes at the batch not yet committed, and deduplication makes its
// second insert a no-op, so each row lands once. When ClickHouse was away it
// first makes sure of the schema, replays the whole backlog whatever the
// mode, and then calls ClickHouse live.
func (p *pipe[R]) insertPending(ctx context.Context, mode insertMode) error {
	live := p.live()
	budget := int64(math.MaxInt64)
	if live && mode == insertDue {
		p.mu.Lock()
		budget = max(p.pendingRows, 1) // a miscount must not strand rows
		p.mu.Unlock()
	}
	if !live {
		sctx, cancel := context.WithTimeout(ctx, p.w.o.InsertTimeout)
		err := p.sh.ensureSchema(sctx)
		cancel()
		if err != nil {
			return err
		}
	}
	for {
		// The inserter alone commits, so the frames in [from, to) stay as
		// they are while it reads them without the lock.
		p.mu.Lock()
		f, from, to, pending, uncertain := p.spool.f, p.spool.offset, p.spool.size, p.pendingRows, p.spool.uncertain
		batch, end, inMem := p.takeMemLocked(from, p.w.o.BatchSize)
		p.mu.Unlock()
		if from >= to {
			if !live {
				p.mu.Lock()
				p.healthy = true
				p.mu.Unlock()
				p.w.log.Info("clickhouse live: "+p.kind.noun+" spool replayed", "addr", p.sh.addr)
			}
			return nil
		}
		if budget <= 0 || (live && mode == insertFull && pending < int64(p.w.o.BatchSize)) {
			return nil
		}
		var err error
		if !inMem {
			batch, end, err = readFrames[R](f, from, to, p.w.o.BatchSize)
		}
		if err != nil {
			// Frames are validated when the spool opens and written whole,
			// so this is corruption under a running process: keep what
			// ClickHouse has, count nothing twice, and go on after it.
			p.w.log.Error(p.kind.noun+" spool corrupt: discarding its unreplayed rest", "err", err, "bytes", to-from)
			p.mu.Lock()
			err = p.spool.commit(to)
			p.pendingRows = 0
			p.trimMemLocked()
			p.updateSpoolGaugesLocked()
			p.mu.Unlock()
			if err != nil {
				return err
			}
			continue
		}
		budget -= int64(len(batch))
		dedup := !live || from < uncertain
		ictx, cancel := context.WithTimeout(ctx, p.w.o.InsertTimeout)
		n, skipped, err := p.insert(ictx, batch, dedup)
		cancel()
		if err != nil {
			p.mu.Lock()
			p.healthy = false
			p.spool.uncertain = max(p.spool.uncertain, end)
			p.mu.Unlock()
			if live {
				p.w.log.Warn("clickhouse insert failed: "+p.kind.noun+" waits in the spool until it answers", "addr", p.sh.addr, "rows", len(batch), "err", err)
			}
			return err
		}
		p.mu.Lock()
		err = p.spool.commit(end)
		if err != nil {
			p.healthy = false // the offset did not move: replay, with deduplication
			p.spool.uncertain = max(p.spool.uncertain, end)
		}
		p.pendingRows = max(0, p.pendingRows-int64(len(batch)))
		p.trimMemLocked()
		p.updateSpoolGaugesLocked()
		p.mu.Unlock()
		if dedup {
			p.replayed.Add(uint64(n))
			p.skipped.Add(uint64(skipped))
		} else {
			p.written.Add(uint64(n))
		}
		if err != nil {
			p.w.log.Error(p.kind.noun+" spool commit failed", "err", err)
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// insert writes batch into the kind's tables, each the rows it keeps.
// With dedup, rows whose request_id is already in a table are skipped,
// which makes replaying a batch idempotent. It returns the rows of the
// primary tables inserted and skipped.
func (p *pipe[R]) insert(ctx context.Context, batch []R, dedup bool) (int, int, error) {
	var rows int
	for _, t := range p.kind.tables {
		sub := batch
		if t.keep != nil {
			sub = nil
			for j := range batch {
				if t.keep(&batch[j]) {
					sub = append(sub, batch[j])
				}
			}
		}
		if len(sub) == 0 {
			continue
		}
		n, err := p.insertTable(ctx, t, sub, dedup)
		if err != nil {
			return 0, 0, err
		}
		if t.primary {
			rows += n
		}
	}
	return rows, len(batch) - rows, nil
}

func (p *pipe[R]) insertTable(ctx context.Context, t table[R], batch []R, dedup bool) (int, error) {
	if dedup {
		have, err := p.existingIDs(ctx, p.sh.lay.local(t.name), batch)
		if err != nil {
			return 0, err
		}
		if len(have) > 0 {
			kept := make([]R, 0, len(batch))
			for i := range batch {
				if !have[*p.kind.id(&batch[i])] {
					kept = append(kept, batch[i])
				}
			}
			batch = kept
		}
	}
	if len(batch) == 0 {
		return 0, nil
	}
	b, err := p.sh.conn.PrepareBatch(ctx, t.def().insertIntoSQL(p.w.o.Database, p.sh.lay.local(t.name)))
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
func (p *pipe[R]) existingIDs(ctx context.Context, tbl string, batch []R) (map[string]bool, error) {
	have := map[string]bool{}
	lo, hi := day(p.kind.time(&batch[0])), day(p.kind.time(&batch[0]))
	for i := range batch {
		d := day(p.kind.time(&batch[i]))
		if d.Before(lo) {
			lo = d
		}
		if d.After(hi) {
			hi = d
		}
	}
	q := fmt.Sprintf("SELECT request_id FROM %s.%s WHERE date >= %s AND date <= %s AND request_id IN ?", p.w.o.Database, tbl, dateLit(lo), dateLit(hi))
	for start := 0; start < len(batch); start += dedupChunk {
		end := min(start+dedupChunk, len(batch))
		ids := make([]any, 0, end-start)
		for i := start; i < end; i++ {
			ids = append(ids, *p.kind.id(&batch[i]))
		}
		rows, err := p.sh.conn.Query(ctx, q, clickhouse.GroupSet{Value: ids})
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
func (p *pipe[R]) drop(n int, reason string) {
	total := p.dropped.Add(uint64(n))
	now := time.Now().UnixNano()
	last := p.lastDropLog.Load()
	if now-last < int64(10*time.Second) || !p.lastDropLog.CompareAndSwap(last, now) {
		return
	}
	prev := p.droppedLogged.Swap(total)
	p.w.log.Warn(p.kind.noun+" dropped", "reason", reason, "rows", total-prev, "total", total)
}

func (p *pipe[R]) updateSpoolGauges() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.updateSpoolGaugesLocked()
}

func (p *pipe[R]) updateSpoolGaugesLocked() {
	p.spoolBytes.Store(p.spool.size)
	p.spoolPending.Store(p.spool.pendingBytes())
}

func (p *pipe[R]) registerMetrics() error {
	reg := p.w.o.Registerer
	if reg == nil {
		return nil
	}
	m, rows := p.kind.metric, p.kind.tables[0].name+" rows"
	var labels prometheus.Labels // a cluster's shards count apart
	if p.w.o.Cluster != "" {
		labels = prometheus.Labels{"shard": fmt.Sprint(p.sh.num)}
	}
	counter := func(name, help string, v *atomic.Uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: m + "_" + name, Help: help, ConstLabels: labels},
			func() float64 { return float64(v.Load()) })
	}
	p.collectors = []prometheus.Collector{
		counter("logged_total", rows+" made durable in the on-disk spool before they are inserted.", &p.logged),
		counter("written_total", rows+" inserted into ClickHouse in the normal course.", &p.written),
		counter("spooled_total", rows+" spooled while ClickHouse was away, to be replayed.", &p.spooled),
		counter("dropped_total", rows+" lost: queue full, spool full or writer closed.", &p.dropped),
		counter("replayed_total", rows+" inserted into ClickHouse from the spool.", &p.replayed),
		counter("replay_skipped_total", "Spooled "+rows+" found already in ClickHouse on replay.", &p.skipped),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: m + "_spool_bytes", Help: "Size of the " + p.kind.tables[0].name + " spool file.", ConstLabels: labels},
			func() float64 { return float64(p.spoolBytes.Load()) }),
	}
	for i, c := range p.collectors {
		if err := reg.Register(c); err != nil {
			for _, r := range p.collectors[:i] {
				reg.Unregister(r)
			}
			return fmt.Errorf("chwriter: register metrics: %w", err)
		}
	}
	return nil
}
