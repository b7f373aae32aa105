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

	"github.com/llmcanary/llmcanary/extproc"
)

// The spool is an append-only file of batches that could not be inserted,
// plus a file holding how far replay has got. Its format, one batch per line:
//
//	<payload length, decimal> SP <CRC-32C of payload, 8 hex digits> SP <payload> LF
//
// where the payload is the batch as a JSON array of extproc.Record. Each
// append is fsync'd. A line that is incomplete or fails its checksum marks a
// torn write (a crash mid-append): it and anything after it are discarded
// when the spool is opened.
//
// The offset file holds the byte offset of the first batch not yet
// replayed, replaced atomically (write, fsync, rename) after each replayed
// batch. When replay reaches the end the log is truncated first and the
// offset reset second; an offset beyond the log's end therefore means "the
// log was emptied" and reads as 0.
const (
	spoolLogName    = "spool.log"
	spoolOffsetName = "spool.offset"
	maxFrameBytes   = 1 << 30
)

// ErrSpoolFull reports that a batch would make the spool exceed its cap.
var ErrSpoolFull = errors.New("spool full")

// errTorn reports an incomplete or corrupt frame.
var errTorn = errors.New("torn spool frame")

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// spool is not safe for concurrent use; the Writer serialises access.
type spool struct {
	dir      string
	f        *os.File
	size     int64 // bytes in the log
	offset   int64 // first byte not yet replayed
	maxBytes int64 // cap on size; 0 means no cap
}

// openSpool opens or creates the spool in dir. It validates every batch
// not yet replayed and truncates a torn tail, returning how many bytes it
// discarded.
func openSpool(dir string, maxBytes int64) (*spool, int64, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, 0, fmt.Errorf("spool: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, spoolLogName), os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, 0, fmt.Errorf("spool: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("spool: %w", err)
	}
	s := &spool{dir: dir, f: f, size: st.Size(), maxBytes: maxBytes}
	s.offset, err = readOffset(filepath.Join(dir, spoolOffsetName))
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if s.offset > s.size {
		s.offset = 0
	}
	good := s.offset
	for good < s.size {
		_, end, err := s.readAt(good)
		if err != nil {
			break
		}
		good = end
	}
	discarded := s.size - good
	if discarded > 0 {
		if err := s.truncate(good); err != nil {
			f.Close()
			return nil, 0, err
		}
	}
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
func (s *spool) pending() bool { return s.offset < s.size }

// pendingBytes is the size of the batches not yet replayed.
func (s *spool) pendingBytes() int64 { return s.size - s.offset }

func encodeFrame(batch []extproc.Record) ([]byte, error) {
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
func (s *spool) append(batch []extproc.Record) error {
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
func (s *spool) next() ([]extproc.Record, int64, error) {
	if !s.pending() {
		return nil, s.offset, io.EOF
	}
	return s.readAt(s.offset)
}

func (s *spool) readAt(pos int64) ([]extproc.Record, int64, error) {
	r := bufio.NewReader(io.NewSectionReader(s.f, pos, s.size-pos))
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
	var batch []extproc.Record
	if err := json.Unmarshal(payload, &batch); err != nil {
		return nil, pos, fmt.Errorf("%w: %v", errTorn, err)
	}
	end := pos + int64(len(lenField)) + int64(len(crcField)) + int64(n) + 1
	return batch, end, nil
}

// commit records that every batch before end has been replayed. When that
// is the whole log, the log is emptied.
func (s *spool) commit(end int64) error {
	if end >= s.size {
		if err := s.truncate(0); err != nil {
			return err
		}
		end = 0
	}
	if err := writeFileAtomic(filepath.Join(s.dir, spoolOffsetName), []byte(strconv.FormatInt(end, 10)+"\n")); err != nil {
		return fmt.Errorf("spool: write offset: %w", err)
	}
	s.offset = end
	return nil
}

func (s *spool) truncate(size int64) error {
	if err := s.f.Truncate(size); err != nil {
		return fmt.Errorf("spool: truncate: %w", err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("spool: sync: %w", err)
	}
	s.size = size
	if s.offset > size {
		s.offset = size
	}
	return nil
}

func (s *spool) close() error { return s.f.Close() }

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
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
