package analyzer

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/llmcanary/llmcanary/internal/durable"
)

// Errors the rollout API maps to status codes.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict")
	ErrInvalid  = errors.New("invalid")
	// ErrControlPlane wraps a control plane that refused a change or could
	// not be reached.
	ErrControlPlane = errors.New("control plane")
)

// RolloutStore keeps rollouts durable: one JSON file per rollout in a data
// directory, replaced atomically (write, fsync, rename, fsync the
// directory) on every change, so a restart reads back every rollout as it
// stood, including its stage and the stage's start. Safe for concurrent
// use; Get and List return copies.
type RolloutStore struct {
	dir      string
	mu       sync.Mutex
	rollouts map[string]*Rollout
	// reserved holds the models a Start is setting up (see Reserve).
	reserved map[string]bool
	// watchers see every persisted change (before is nil for a new
	// rollout), in the order they were registered. They run under the
	// store's lock and must not block.
	watchers []*watcher
}

type watcher struct{ f func(before, after *Rollout) }

// OnChange registers f to see every persisted change from now on (before
// is nil for a new rollout) and returns the function that unregisters it.
// before and after are the store's own: f reads them and copies what it
// keeps, never changes them. f runs under the store's lock, so it must not
// block or call the store: the stage log, the notifier and the metrics
// queue their work.
func (s *RolloutStore) OnChange(f func(before, after *Rollout)) (remove func()) {
	return addWatcher(&s.mu, &s.watchers, f)
}

// addWatcher appends f to list under mu and returns the function that
// removes it.
func addWatcher(mu *sync.Mutex, list *[]*watcher, f func(before, after *Rollout)) (remove func()) {
	mu.Lock()
	defer mu.Unlock()
	w := &watcher{f}
	*list = append(*list, w)
	return func() {
		mu.Lock()
		defer mu.Unlock()
		*list = slices.DeleteFunc(*list, func(x *watcher) bool { return x == w })
	}
}

// changed tells every watcher about a persisted change. Callers hold s.mu.
func (s *RolloutStore) changed(before, after *Rollout) {
	for _, w := range s.watchers {
		w.f(before, after)
	}
}

// OpenRolloutStore reads every rollout in dir, creating dir if needed.
func OpenRolloutStore(dir string) (*RolloutStore, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("rollout store: %w", err)
	}
	s := &RolloutStore{dir: dir, rollouts: map[string]*Rollout{}, reserved: map[string]bool{}}
	paths, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, fmt.Errorf("rollout store: %w", err)
	}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("rollout store: %w", err)
		}
		var r Rollout
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, fmt.Errorf("rollout store: %s: %w", filepath.Base(p), err)
		}
		if r.ID+".json" != filepath.Base(p) {
			return nil, fmt.Errorf("rollout store: %s holds rollout %q", filepath.Base(p), r.ID)
		}
		s.rollouts[r.ID] = &r
	}
	return s, nil
}

// NewID returns a new rollout id: the time and random hex, safe as a file
// name and in a URL path.
func NewID(now time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "r-" + now.UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b[:])
}

// Reserve claims model for a rollout about to be created: it fails with
// ErrConflict while the model has an active rollout or another
// reservation. The caller moves traffic, calls Create, then release.
// Reservations live in memory: one analyzer writes the store.
func (s *RolloutStore) Reserve(model string) (release func(), err error) {
	return reserveModel(&s.mu, s.reserved, model, func() error { return s.activeLocked(model) })
}

// reserveModel claims model in reserved under mu, unless it is reserved
// already or active (run under mu) reports an active rollout.
func reserveModel(mu *sync.Mutex, reserved map[string]bool, model string, active func() error) (release func(), err error) {
	mu.Lock()
	defer mu.Unlock()
	if reserved[model] {
		return nil, fmt.Errorf("%w: a rollout of model %q is being started", ErrConflict, model)
	}
	if err := active(); err != nil {
		return nil, err
	}
	reserved[model] = true
	return func() {
		mu.Lock()
		defer mu.Unlock()
		delete(reserved, model)
	}, nil
}

// activeLocked returns ErrConflict when model has an active rollout.
func (s *RolloutStore) activeLocked(model string) error {
	for _, o := range s.rollouts {
		if o.Model == model && o.Status.Active() {
			return fmt.Errorf("%w: model %q already has the %s rollout %s; finish or abort it first", ErrConflict, model, o.Status, o.ID)
		}
	}
	return nil
}

// Create stores a new rollout. It fails with ErrConflict when the id
// exists or another rollout of the same model is still active.
func (s *RolloutStore) Create(r *Rollout) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.rollouts[r.ID]; ok {
		return fmt.Errorf("%w: rollout %q exists", ErrConflict, r.ID)
	}
	if strings.ContainsAny(r.ID, `/\`) || r.ID == "" || strings.HasPrefix(r.ID, ".") {
		return fmt.Errorf("%w: rollout id %q", ErrInvalid, r.ID)
	}
	if err := s.activeLocked(r.Model); err != nil {
		return err
	}
	c, err := copyRollout(r)
	if err != nil {
		return err
	}
	if err := s.save(c); err != nil {
		return err
	}
	s.rollouts[c.ID] = c
	s.changed(nil, c)
	return nil
}

// Get returns a copy of one rollout.
func (s *RolloutStore) Get(id string) (*Rollout, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.rollouts[id]
	if !ok {
		return nil, fmt.Errorf("%w: rollout %q does not exist", ErrNotFound, id)
	}
	return copyRollout(r)
}

// List returns copies of every rollout, newest first.
func (s *RolloutStore) List() ([]*Rollout, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Rollout, 0, len(s.rollouts))
	for _, r := range s.rollouts {
		c, err := copyRollout(r)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	sortNewestFirst(out)
	return out, nil
}

// sortNewestFirst orders rollouts as List returns them: newest first, ties
// by id.
func sortNewestFirst(out []*Rollout) {
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.After(out[j].Created)
		}
		return out[i].ID > out[j].ID
	})
}

// Update applies change to a copy of the rollout and stores the result
// durably. If change or the write fails, nothing changes.
func (s *RolloutStore) Update(id string, change func(*Rollout) error) (*Rollout, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.rollouts[id]
	if !ok {
		return nil, fmt.Errorf("%w: rollout %q does not exist", ErrNotFound, id)
	}
	c, err := applyChange(cur, change)
	if err != nil {
		return nil, err
	}
	if err := s.save(c); err != nil {
		return nil, err
	}
	s.rollouts[id] = c
	s.changed(cur, c)
	return copyRollout(c)
}

// applyChange returns a copy of cur changed by change, keeping its id.
func applyChange(cur *Rollout, change func(*Rollout) error) (*Rollout, error) {
	c, err := copyRollout(cur)
	if err != nil {
		return nil, err
	}
	if err := change(c); err != nil {
		return nil, err
	}
	c.ID = cur.ID
	return c, nil
}

func (s *RolloutStore) save(r *Rollout) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("rollout store: encode %s: %w", r.ID, err)
	}
	if err := durable.WriteFile(filepath.Join(s.dir, r.ID+".json"), b); err != nil {
		return fmt.Errorf("rollout store: %w", err)
	}
	return nil
}

func copyRollout(r *Rollout) (*Rollout, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("rollout store: encode %s: %w", r.ID, err)
	}
	var c Rollout
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("rollout store: decode %s: %w", r.ID, err)
	}
	return &c, nil
}

// Canaries returns the canary versions of the active rollouts, for the
// judge to grade first (quality.JudgeOptions.Priority). A store that
// cannot be read gives none: the judge then grades newest first.
func (s *RolloutStore) Canaries() []string { return activeCanaries(s) }

// activeCanaries returns the canary versions of the active rollouts in
// store; none when it cannot be read.
func activeCanaries(store interface{ List() ([]*Rollout, error) }) []string {
	all, err := store.List()
	if err != nil {
		return nil
	}
	var out []string
	for _, r := range all {
		if r.Status.Active() {
			out = append(out, r.Canary)
		}
	}
	return out
}
