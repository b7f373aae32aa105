package xds

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/llmcanary/llmcanary/internal/durable"
)

// StateStore keeps the desired state durable. Every accepted change is written
// to a temporary file, fsynced, renamed over state.json and the directory
// fsynced: a crash at any point leaves either the previous or the new state,
// never a torn one. Each change is also appended to changes.jsonl, the audit
// trail of who changed what. Safe for concurrent use. It is the default
// Store; EtcdStore shares the state between control plane replicas.
type StateStore struct {
	dir string

	mu    sync.Mutex
	state *State
}

const (
	stateFile   = "state.json"
	changesFile = "changes.jsonl"
)

// Change is one line of the audit trail.
type Change struct {
	Revision uint64    `json:"revision"`
	Time     time.Time `json:"time"`
	Actor    string    `json:"actor,omitempty"`
	Summary  string    `json:"summary"`
}

// OpenStateStore loads the state in dir, or starts empty when there is none.
// A corrupt state file is an error, never silently replaced by an empty one.
func OpenStateStore(dir string) (*StateStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	s := &StateStore{dir: dir, state: &State{Models: map[string]*Model{}}}
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
		return s, nil
	case err != nil:
		return nil, fmt.Errorf("store: %w", err)
	}
	st, err := decodeState(b, filepath.Join(dir, stateFile))
	if err != nil {
		return nil, err
	}
	s.state = st
	return s, nil
}

// decodeState reads a stored state (the JSON of the whole State) and
// checks it; where names its place in errors.
func decodeState(b []byte, where string) (*State, error) {
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("store: %s is corrupt: %w", where, err)
	}
	if st.Models == nil {
		st.Models = map[string]*Model{}
	}
	if err := st.Validate(); err != nil {
		return nil, fmt.Errorf("store: %s holds an invalid state: %w", where, err)
	}
	return &st, nil
}

// State returns a copy of the current state.
func (s *StateStore) State() *State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state.Clone()
}

// Update applies change to a copy of the state. If change returns an error,
// or the result does not validate, nothing changes and the error is
// returned. Otherwise the revision is increased and prepare is called with
// the new state: it must check that the state can be published (translate
// and validate every resource) and return the function that publishes it.
// Only then is the state written durably and made current, and publish is
// called while the store is still locked, so snapshots go out in revision
// order and the fleet never runs a state the disk does not hold.
// If expect is non-zero and differs from the current revision, the update
// fails with ErrRevisionChanged (optimistic concurrency for API clients).
func (s *StateStore) Update(expect uint64, actor, summary string, change func(*State) error, prepare func(*State) (func() error, error)) (*State, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if expect != 0 && expect != s.state.Revision {
		return nil, fmt.Errorf("%w: expected revision %d, current is %d", ErrRevisionChanged, expect, s.state.Revision)
	}
	next, publish, err := nextState(s.state, change, prepare)
	if err != nil {
		return nil, err
	}
	if err := s.write(next); err != nil {
		return nil, err
	}
	s.appendChange(Change{Revision: next.Revision, Time: time.Now().UTC(), Actor: actor, Summary: summary})
	s.state = next
	if err := publish(); err != nil {
		return next.Clone(), fmt.Errorf("state %d saved but not published: %w", next.Revision, err)
	}
	return next.Clone(), nil
}

// nextState applies change to a copy of cur, validates the result, gives
// it the next revision and prepares its publication: every store's Update
// starts here, before anything is written.
func nextState(cur *State, change func(*State) error, prepare func(*State) (func() error, error)) (*State, func() error, error) {
	next := cur.Clone()
	if err := change(next); err != nil {
		return nil, nil, err
	}
	if err := next.Validate(); err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	next.assignLanes(cur)
	next.Revision = cur.Revision + 1
	publish := func() error { return nil }
	if prepare != nil {
		p, err := prepare(next)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		publish = p
	}
	return next, publish, nil
}

// Follow returns at once: the file has no other writer, so every state
// this store makes current is published by its own Update.
func (s *StateStore) Follow(context.Context, func(*State) error) {}

func (s *StateStore) write(st *State) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("store: encode: %w", err)
	}
	return durable.WriteFile(filepath.Join(s.dir, stateFile), append(b, '\n'))
}

// appendChange records an accepted change. The audit trail is best effort:
// the state file is the truth, and a failed append is not a failed change.
func (s *StateStore) appendChange(c Change) {
	f, err := os.OpenFile(filepath.Join(s.dir, changesFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return
	}
	defer f.Close()
	b, _ := json.Marshal(c)
	_, _ = f.Write(append(b, '\n'))
}

// Changes returns the audit trail, oldest first. Lines torn by a crash are
// skipped.
func (s *StateStore) Changes() ([]Change, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, changesFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Change
	for _, line := range splitLines(b) {
		var c Change
		if json.Unmarshal(line, &c) == nil {
			out = append(out, c)
		}
	}
	return out, nil
}

func splitLines(b []byte) [][]byte {
	var out [][]byte
	start := 0
	for i, c := range b {
		if c == '\n' {
			if i > start {
				out = append(out, b[start:i])
			}
			start = i + 1
		}
	}
	return out
}
