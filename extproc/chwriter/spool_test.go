package chwriter

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/extproc"
)

func readAll(t *testing.T, s *spool[extproc.Record]) [][]extproc.Record {
	t.Helper()
	var out [][]extproc.Record
	pos := s.offset
	for pos < s.size {
		b, end, err := s.readAt(pos)
		if err != nil {
			t.Fatalf("read frame at %d: %v", pos, err)
		}
		out = append(out, b)
		pos = end
	}
	return out
}

func TestSpoolRoundTripsBatchesInOrder(t *testing.T) {
	dir := t.TempDir()
	s, discarded, err := openSpool[extproc.Record](dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 3, 4, 5, 6, 7, 891234567, time.UTC)
	batches := [][]extproc.Record{makeRecords(3, base), makeRecords(1, base.Add(time.Hour)), makeRecords(7, base.Add(2*time.Hour))}
	for _, b := range batches {
		if err := s.append(b); err != nil {
			t.Fatal(err)
		}
	}
	s.close()

	s, discarded, err = openSpool[extproc.Record](dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	if discarded != 0 {
		t.Fatalf("discarded %d bytes of a clean spool", discarded)
	}
	got := readAll(t, s)
	if len(got) != len(batches) {
		t.Fatalf("read %d batches, want %d", len(got), len(batches))
	}
	for i := range batches {
		for j := range batches[i] {
			want, have := batches[i][j], got[i][j]
			if !want.Time.Equal(have.Time) {
				t.Fatalf("batch %d record %d: time %v, want %v", i, j, have.Time, want.Time)
			}
			have.Time = want.Time
			if !reflect.DeepEqual(want, have) {
				t.Fatalf("batch %d record %d:\n got %+v\nwant %+v", i, j, have, want)
			}
		}
	}
}

func TestSpoolDiscardsTornTailAndKeepsEarlierBatches(t *testing.T) {
	full, err := encodeFrame(makeRecords(4, time.Unix(1e9, 0)))
	if err != nil {
		t.Fatal(err)
	}
	badCRC := append([]byte(nil), full...)
	badCRC[len(badCRC)-5] ^= 0x01 // inside the JSON payload
	noNewline := append([]byte(nil), full[:len(full)-1]...)
	noNewline = append(noNewline, 'x')
	cases := []struct {
		name string
		tail []byte
	}{
		{"cut inside the length", full[:1]},
		{"cut inside the checksum", full[:6]},
		{"cut inside the payload", full[:len(full)/2]},
		{"cut before the newline", full[:len(full)-1]},
		{"checksum mismatch", badCRC},
		{"garbage instead of newline", noNewline},
		{"not a frame at all", []byte("hello world\n")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s, _, err := openSpool[extproc.Record](dir, 0)
			if err != nil {
				t.Fatal(err)
			}
			first, second := makeRecords(2, time.Unix(1e9, 0)), makeRecords(3, time.Unix(2e9, 0))
			for _, b := range [][]extproc.Record{first, second} {
				if err := s.append(b); err != nil {
					t.Fatal(err)
				}
			}
			good := s.size
			s.close()
			f, err := os.OpenFile(filepath.Join(dir, spoolLogName), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.Write(tc.tail)
			f.Close()

			s, discarded, err := openSpool[extproc.Record](dir, 0)
			if err != nil {
				t.Fatalf("open torn spool: %v", err)
			}
			defer s.close()
			if discarded != int64(len(tc.tail)) {
				t.Fatalf("discarded %d bytes, want %d", discarded, len(tc.tail))
			}
			if s.size != good {
				t.Fatalf("spool size %d after open, want %d", s.size, good)
			}
			got := readAll(t, s)
			if len(got) != 2 || len(got[0]) != 2 || len(got[1]) != 3 {
				t.Fatalf("kept batches of sizes %v, want [2 3]", lens(got))
			}
			// The spool stays appendable after the cut.
			if err := s.append(first); err != nil {
				t.Fatal(err)
			}
			if n := len(readAll(t, s)); n != 3 {
				t.Fatalf("%d batches after appending to a repaired spool, want 3", n)
			}
		})
	}
}

func lens(bs [][]extproc.Record) []int {
	out := make([]int, len(bs))
	for i, b := range bs {
		out[i] = len(b)
	}
	return out
}

func TestSpoolCommitAdvancesAndEmptiesAtEnd(t *testing.T) {
	dir := t.TempDir()
	s, _, err := openSpool[extproc.Record](dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if err := s.append(makeRecords(i+1, time.Unix(int64(i)*1e6, 0))); err != nil {
			t.Fatal(err)
		}
	}
	b, end, err := s.next()
	if err != nil || len(b) != 1 {
		t.Fatalf("first batch: %d records, err %v", len(b), err)
	}
	if err := s.commit(end); err != nil {
		t.Fatal(err)
	}
	s.close()

	// Progress survives a restart.
	s, _, err = openSpool[extproc.Record](dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	b, _, err = s.next()
	if err != nil || len(b) != 2 {
		t.Fatalf("batch after reopen: %d records, err %v; want the second batch", len(b), err)
	}
	for s.pending() {
		_, end, err := s.next()
		if err != nil {
			t.Fatal(err)
		}
		if err := s.commit(end); err != nil {
			t.Fatal(err)
		}
	}
	if s.size != 0 || s.offset != 0 {
		t.Fatalf("drained spool has size %d offset %d, want 0 0", s.size, s.offset)
	}
	if _, _, err := s.next(); !errors.Is(err, io.EOF) {
		t.Fatalf("next on a drained spool: %v, want io.EOF", err)
	}
	s.close()
}

func TestSpoolOffsetBeyondLogMeansEmptied(t *testing.T) {
	// A crash after truncating the drained log and before resetting the
	// offset leaves an offset past the end; new batches must still replay.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, spoolOffsetName), []byte("123456\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, _, err := openSpool[extproc.Record](dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	if err := s.append(makeRecords(2, time.Unix(1e9, 0))); err != nil {
		t.Fatal(err)
	}
	b, _, err := s.next()
	if err != nil || len(b) != 2 {
		t.Fatalf("next: %d records, err %v; want 2", len(b), err)
	}
}

func TestSpoolRefusesBatchBeyondCap(t *testing.T) {
	frame, err := encodeFrame(makeRecords(5, time.Unix(1e9, 0)))
	if err != nil {
		t.Fatal(err)
	}
	s, _, err := openSpool[extproc.Record](t.TempDir(), int64(2*len(frame)+10))
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	for i := 0; i < 2; i++ {
		if err := s.append(makeRecords(5, time.Unix(1e9, 0))); err != nil {
			t.Fatalf("append %d under the cap: %v", i, err)
		}
	}
	if err := s.append(makeRecords(5, time.Unix(1e9, 0))); !errors.Is(err, ErrSpoolFull) {
		t.Fatalf("append over the cap: %v, want ErrSpoolFull", err)
	}
	if s.size != int64(2*len(frame)) {
		t.Fatalf("spool size %d after a refused append, want %d", s.size, 2*len(frame))
	}
}

func TestSpoolCompactionKeepsTheUnconsumedTailAcrossACrash(t *testing.T) {
	dir := t.TempDir()
	s, _, err := openSpool[extproc.Record](dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	base := time.Now()
	batches := [][]extproc.Record{makeRecords(40, base), makeRecords(40, base.Add(time.Minute)), makeRecords(5, base.Add(2*time.Minute))}
	var ends []int64
	for _, b := range batches {
		if err := s.append(b); err != nil {
			t.Fatal(err)
		}
		ends = append(ends, s.size)
	}
	tail, err := os.ReadFile(filepath.Join(dir, spoolLogName))
	if err != nil {
		t.Fatal(err)
	}
	tail = tail[ends[1]:]

	// A crash between the log's replacement and the offset's reset leaves
	// the old offset (three quarters into the old log, so beyond the end of
	// the new one) beside the new log.
	s.compactAt = 1 << 40 // no compaction yet: only the offset moves
	if err := s.commit(ends[1]); err != nil {
		t.Fatal(err)
	}
	snapshot := t.TempDir()
	s.close()
	if err := os.WriteFile(filepath.Join(snapshot, spoolLogName), tail, 0o644); err != nil {
		t.Fatal(err)
	}
	off, err := os.ReadFile(filepath.Join(dir, spoolOffsetName))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(snapshot, spoolOffsetName), off, 0o644); err != nil {
		t.Fatal(err)
	}
	crashed, _, err := openSpool[extproc.Record](snapshot, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := lens(readAll(t, crashed)); !reflect.DeepEqual(got, []int{5}) {
		t.Fatalf("after a crash mid-compaction the spool holds batches of %v, want [5]", got)
	}
	crashed.close()

	// The compaction itself.
	s, _, err = openSpool[extproc.Record](dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	s.compactAt = 1
	if err := s.commit(ends[1]); err != nil {
		t.Fatal(err)
	}
	if s.offset != 0 || s.size != int64(len(tail)) {
		t.Fatalf("after compaction offset %d size %d, want 0 and %d", s.offset, s.size, len(tail))
	}
	if err := s.append(makeRecords(2, base)); err != nil {
		t.Fatal(err)
	}
	s.close()
	s, _, err = openSpool[extproc.Record](dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	if got := lens(readAll(t, s)); !reflect.DeepEqual(got, []int{5, 2}) {
		t.Fatalf("compacted spool holds batches of %v, want [5 2]", got)
	}
}

func TestSpoolDirectoryServesOneProcessAtATime(t *testing.T) {
	dir := t.TempDir()
	s, _, err := openSpool[extproc.Record](dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := openSpool[extproc.Record](dir, 0); !errors.Is(err, ErrSpoolLocked) {
		t.Fatalf("second open of a spool in use: %v, want ErrSpoolLocked", err)
	}
	s.close()
	s, _, err = openSpool[extproc.Record](dir, 0)
	if err != nil {
		t.Fatalf("open after the first closed: %v", err)
	}
	s.close()
}
