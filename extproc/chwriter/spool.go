package chwriter

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// The spool is the writer's write-ahead log: an append-only file of
// batches, each appended and fsync'd before it is sent to ClickHouse, plus
// a file holding how far ClickHouse has confirmed. Its format, one batch per
// line:
//
//	<payload length, decimal> SP <CRC-32C of payload, 8 hex digits> SP <payload> LF
//
// where the payload is the batch as a JSON array of rows (extproc.Record
// or extproc.LogEntry: one spool per row type). Each append is fsync'd. A
// line that is incomplete or fails its checksum marks a
// torn write (a crash mid-append): it and anything after it are discarded
// when the spool is opened.
//
// The offset file holds the byte offset of the first batch not yet in
// ClickHouse, replaced atomically (write, fsync, rename) after each inserted
// batch. When inserts reach the end the log is truncated first and the
// offset reset second; an offset beyond the log's end therefore means "the
// log was emptied" and reads as 0. A log that is appended to while it is
// consumed never reaches its end under steady traffic, so once the log
// outgrows compactMinBytes and the consumed head is three times the
// unconsumed tail, the tail is copied into a new log that replaces the old
// one (see compact).
const (
	spoolLogName    = "spool.log"
	spoolOffsetName = "spool.offset"
	spoolLockName   = "spool.lock"
	maxFrameBytes   = 1 << 30
	compactMinBytes = 4 << 20
)

// ErrSpoolFull reports that a batch would make the spool exceed its cap.
var ErrSpoolFull = errors.New("spool full")

// errTorn reports an incomplete or corrupt frame.
var errTorn = errors.New("torn spool frame")

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// ErrSpoolLocked reports that another process holds the spool directory.
var ErrSpoolLocked = errors.New("spool directory in use by another process")

// spool is not safe for concurrent use; the Writer serialises access.
// Bytes before size never change until commit or truncate, so one reader
// may read [offset, size) through readFrames while appends go on.
type spool[R any] struct {
	dir      string
	lock     *os.File // holds an exclusive flock on spoolLockName
	f        *os.File
	size     int64 // bytes in the log
	offset   int64 // first byte not yet in ClickHouse
	maxBytes int64 // cap on size; 0 means no cap
	// uncertain ends the range of frames that may already be in ClickHouse
	// although offset has not passed them: everything found at open (a
	// crash may have struck between an insert and its offset write) and
	// every frame of a failed insert (a timeout may hide a success). They
	// are inserted with deduplication.
	uncertain int64
	// openRows counts the rows of the frames not yet replayed at open.
	openRows int64
	// compactAt is the least log size compact runs at; compactMinBytes
	// unless a test sets it.
	compactAt int64
}

// openSpool opens or creates the spool in dir and locks it against other
// processes (the lock ends with the process, crash or not). It validates
// every batch not yet replayed and truncates a torn tail, returning how
// many bytes it discarded.
func openSpool[R any](dir string, maxBytes int64) (*spool[R], int64, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, 0, fmt.Errorf("spool: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, spoolLockName), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, 0, fmt.Errorf("spool: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, 0, fmt.Errorf("spool %s: %w (%v)", dir, ErrSpoolLocked, err)
	}
	f, err := os.OpenFile(filepath.Join(dir, spoolLogName), os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		lock.Close()
		return nil, 0, fmt.Errorf("spool: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		lock.Close()
		return nil, 0, fmt.Errorf("spool: %w", err)
	}
	s := &spool[R]{dir: dir, lock: lock, f: f, size: st.Size(), maxBytes: maxBytes, compactAt: compactMinBytes}
	s.offset, err = readOffset(filepath.Join(dir, spoolOffsetName))
	if err != nil {
		s.close()
		return nil, 0, err
	}
	if s.offset > s.size {
		s.offset = 0
	}
	good := s.offset
	for good < s.size {
		batch, end, err := s.readAt(good)
		if err != nil {
			break
		}
		good = end
		s.openRows += int64(len(batch))
	}
	discarded := s.size - good
	if discarded > 0 {
		if err := s.truncate(good); err != nil {
			s.close()
			return nil, 0, err
		}
	}
	s.uncertain = s.size
	return s, discarded, nil
}

func readOffset(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("spool: %w", err)
	}
	off, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || off < 0 {
		return 0, fmt.Errorf("spool: corrupt offset file %s: %q", path, b)
	}
	return off, nil
}

// pending reports whether batches wait for replay.
func (s *spool[R]) pending() bool { return s.offset < s.size }

// pendingBytes is the size of the batches not yet replayed.
func (s *spool[R]) pendingBytes() int64 { return s.size - s.offset }

func encodeFrame[R any](batch []R) ([]byte, error) {
	payload, err := json.Marshal(batch)
	if err != nil {
		return nil, fmt.Errorf("spool: encode batch: %w", err)
	}
	head := fmt.Sprintf("%d %08x ", len(payload), crc32.Checksum(payload, crcTable))
	frame := make([]byte, 0, len(head)+len(payload)+1)
	frame = append(frame, head...)
	frame = append(frame, payload...)
	return append(frame, '\n'), nil
}

// append writes batch as one frame and fsyncs it. On ErrSpoolFull nothing
// is written; on a write error the partial frame is cut off again.
func (s *spool[R]) append(batch []R) error {
	frame, err := encodeFrame(batch)
	if err != nil {
		return err
	}
	if s.maxBytes > 0 && s.size+int64(len(frame)) > s.maxBytes {
		return ErrSpoolFull
	}
	if _, err := s.f.Write(frame); err != nil {
		_ = s.truncate(s.size)
		return fmt.Errorf("spool: append: %w", err)
	}
	if err := s.f.Sync(); err != nil {
		_ = s.truncate(s.size)
		return fmt.Errorf("spool: sync: %w", err)
	}
	s.size += int64(len(frame))
	return nil
}

// next returns the oldest batch not yet replayed and the offset just past
// it; io.EOF when there is none.
func (s *spool[R]) next() ([]R, int64, error) {
	if !s.pending() {
		return nil, s.offset, io.EOF
	}
	return s.readAt(s.offset)
}

func (s *spool[R]) readAt(pos int64) ([]R, int64, error) {
	return readFrame[R](s.f, pos, s.size)
}

// readFrames reads whole frames of f from pos on, up to limit, until they
// hold at least maxRows records; it returns them as one batch and the
// offset just past the last frame read.
func readFrames[R any](f io.ReaderAt, pos, limit int64, maxRows int) ([]R, int64, error) {
	var batch []R
	for pos < limit && len(batch) < maxRows {
		b, end, err := readFrame[R](f, pos, limit)
		if err != nil {
			return nil, pos, err
		}
		if batch == nil {
			batch = b
		} else {
			batch = append(batch, b...)
		}
		pos = end
	}
	return batch, pos, nil
}

// readFrame reads the frame at pos of f, which must end by limit.
func readFrame[R any](f io.ReaderAt, pos, limit int64) ([]R, int64, error) {
	r := bufio.NewReader(io.NewSectionReader(f, pos, limit-pos))
	lenField, err := r.ReadString(' ')
	if err != nil || len(lenField) > 12 {
		return nil, pos, errTorn
	}
	n, err := strconv.Atoi(strings.TrimSuffix(lenField, " "))
	if err != nil || n < 0 || n > maxFrameBytes {
		return nil, pos, errTorn
	}
	crcField := make([]byte, 9)
	if _, err := io.ReadFull(r, crcField); err != nil || crcField[8] != ' ' {
		return nil, pos, errTorn
	}
	want, err := strconv.ParseUint(string(crcField[:8]), 16, 32)
	if err != nil {
		return nil, pos, errTorn
	}
	payload := make([]byte, n+1)
	if _, err := io.ReadFull(r, payload); err != nil || payload[n] != '\n' {
		return nil, pos, errTorn
	}
	payload = payload[:n]
	if crc32.Checksum(payload, crcTable) != uint32(want) {
		return nil, pos, errTorn
	}
	var batch []R
	if err := json.Unmarshal(payload, &batch); err != nil {
		return nil, pos, fmt.Errorf("%w: %v", errTorn, err)
	}
	end := pos + int64(len(lenField)) + int64(len(crcField)) + int64(n) + 1
	return batch, end, nil
}

// commit records that every batch before end is in ClickHouse. When that
// is the whole log, the log is emptied; when it is most of a large log,
// the rest moves to a new log (compact).
func (s *spool[R]) commit(end int64) error {
	if end >= s.size {
		if err := s.truncate(0); err != nil {
			return err
		}
		end = 0
	}
	if err := s.writeOffset(end); err != nil {
		return err
	}
	s.offset = end
	// Compact when the unconsumed tail is at most a third of the consumed
	// head: copying it then costs at most a third more disk writes over
	// the log's life, and the offset on disk lies beyond the new log's end.
	if s.size >= s.compactAt && s.offset >= 3*(s.size-s.offset) {
		return s.compact()
	}
	return nil
}

func (s *spool[R]) writeOffset(off int64) error {
	if err := writeFileAtomic(filepath.Join(s.dir, spoolOffsetName), []byte(strconv.FormatInt(off, 10)+"\n")); err != nil {
		return fmt.Errorf("spool: write offset: %w", err)
	}
	return nil
}

// compact replaces the log by one holding only its frames from the offset
// on, and resets the offset to 0. It runs only when the offset on disk lies
// beyond what is left of the log after it: a crash between the replacement and the
// offset write then leaves an offset beyond the new log's end, which
// openSpool reads as 0 — the right offset for the new log. Nothing is lost
// or replayed twice.
func (s *spool[R]) compact() error {
	path := filepath.Join(s.dir, spoolLogName)
	tmp := path + ".tmp"
	nf, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("spool: compact: %w", err)
	}
	end := s.offset
	if _, err := io.Copy(nf, io.NewSectionReader(s.f, end, s.size-end)); err != nil {
		nf.Close()
		return fmt.Errorf("spool: compact: %w", err)
	}
	if err := nf.Sync(); err != nil {
		nf.Close()
		return fmt.Errorf("spool: compact: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		nf.Close()
		return fmt.Errorf("spool: compact: %w", err)
	}
	// From here on the new log is the log, whatever fails next: the
	// offset on disk, end, reads as 0 against it.
	s.f.Close()
	s.f = nf
	s.size -= end
	s.offset = 0
	s.uncertain = max(0, s.uncertain-end)
	if err := syncDir(s.dir); err != nil {
		return fmt.Errorf("spool: compact: %w", err)
	}
	return s.writeOffset(0)
}

func (s *spool[R]) truncate(size int64) error {
	if err := s.f.Truncate(size); err != nil {
		return fmt.Errorf("spool: truncate: %w", err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("spool: sync: %w", err)
	}
	s.size = size
	s.offset = min(s.offset, size)
	s.uncertain = min(s.uncertain, size)
	return nil
}

// close releases the log and the directory's lock.
func (s *spool[R]) close() error { return errors.Join(s.f.Close(), s.lock.Close()) }

func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
