package xds

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func testModel(stableWeight float64) *Model {
	return &Model{
		Name:   "llama",
		Stable: "v1",
		Versions: []Version{
			{Name: "v1", Endpoints: []string{"127.0.0.1:8001"}},
			{Name: "v2", Endpoints: []string{"127.0.0.1:8002"}},
		},
		Weights: map[string]float64{"v1": stableWeight, "v2": 100 - stableWeight},
	}
}

func TestStoreStateSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	st, err := OpenStateStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []float64{98, 95, 90} {
		w := w
		if _, err := st.Update(0, "test", "step", func(s *State) error {
			s.Models["llama"] = testModel(w)
			return nil
		}, nil); err != nil {
			t.Fatal(err)
		}
	}
	reopened, err := OpenStateStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	s := reopened.State()
	if s.Revision != 3 || s.Models["llama"].Weights["v2"] != 10 {
		t.Fatalf("after restart: revision %d weights %v; want revision 3 with v2=10", s.Revision, s.Models["llama"].Weights)
	}
}

func TestStoreRejectedChangeIsNotWritten(t *testing.T) {
	dir := t.TempDir()
	st, _ := OpenStateStore(dir)
	st.Update(0, "test", "create", func(s *State) error { s.Models["llama"] = testModel(100); return nil }, nil)
	_, err := st.Update(0, "test", "bad", func(s *State) error {
		s.Models["llama"].Weights = map[string]float64{"v1": 50}
		return nil
	}, nil)
	if err == nil {
		t.Fatal("weights adding up to 50 were accepted")
	}
	_, err = st.Update(0, "test", "unpublishable", func(s *State) error {
		s.Models["llama"].Weights = map[string]float64{"v1": 10, "v2": 90}
		return nil
	}, func(*State) (func() error, error) { return nil, fmt.Errorf("envoy would reject it") })
	if err == nil {
		t.Fatal("a state the publisher refused was accepted")
	}
	reopened, _ := OpenStateStore(dir)
	if s := reopened.State(); s.Revision != 1 || s.Models["llama"].Weights["v1"] != 100 {
		t.Fatalf("disk holds revision %d weights %v; want the last accepted state", s.Revision, s.Models["llama"].Weights)
	}
}

func TestStoreCorruptStateIsAnErrorNotAnEmptyFleet(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, stateFile), []byte(`{"revision": 4, "models": {"llama": {`), 0o600)
	if _, err := OpenStateStore(dir); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("corrupt state file opened: %v", err)
	}
}

// TestStoreCrashMidWriteKeepsLastAcceptedState kills a writer process at
// random moments while it commits changes as fast as it can. Every time, the
// state on disk must open, be valid, and be at least the revision the writer
// reported as accepted before it died.
func TestStoreCrashMidWriteKeepsLastAcceptedState(t *testing.T) {
	if os.Getenv("LLMCANARY_STORE_CRASH_CHILD") != "" {
		crashChild()
		return
	}
	for round := 0; round < 5; round++ {
		dir := t.TempDir()
		cmd := exec.Command(os.Args[0], "-test.run", "^TestStoreCrashMidWriteKeepsLastAcceptedState$")
		cmd.Env = append(os.Environ(), "LLMCANARY_STORE_CRASH_CHILD="+dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Read accepted revisions until the kill.
		acked := make(chan uint64, 1<<16)
		go func() {
			buf := make([]byte, 64)
			var line []byte
			for {
				n, err := out.Read(buf)
				for _, c := range buf[:n] {
					if c == '\n' {
						if r, err := strconv.ParseUint(string(line), 10, 64); err == nil {
							acked <- r
						}
						line = line[:0]
					} else {
						line = append(line, c)
					}
				}
				if err != nil {
					close(acked)
					return
				}
			}
		}()
		// Kill only once the writer is committing, at a different moment
		// each round.
		last, ok := <-acked
		if !ok {
			t.Fatalf("round %d: writer died before committing anything", round)
		}
		time.Sleep(time.Duration(5+round*13) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		for r := range acked {
			last = r
		}
		st, err := OpenStateStore(dir)
		if err != nil {
			t.Fatalf("round %d: store does not open after a crash: %v", round, err)
		}
		if got := st.State().Revision; got < last {
			t.Fatalf("round %d: disk has revision %d but %d was acknowledged", round, got, last)
		}
	}
}

func crashChild() {
	st, err := OpenStateStore(os.Getenv("LLMCANARY_STORE_CRASH_CHILD"))
	if err != nil {
		panic(err)
	}
	for i := 0; ; i++ {
		w := float64(i%99 + 1)
		s, err := st.Update(0, "crash", "step", func(s *State) error {
			s.Models["llama"] = testModel(w)
			return nil
		}, nil)
		if err != nil {
			panic(err)
		}
		fmt.Println(s.Revision)
	}
}
