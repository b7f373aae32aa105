package xds

import (
	"fmt"
	"time"
)

// StableChange is one entry of a model's history: a version became the
// stable one. The control plane writes it with the change that moved the
// model's stable version (a promotion, a revert, an operator's PUT), inside
// the model's desired state, so whatever store holds the state holds its
// history too.
type StableChange struct {
	// Version became stable; Previous was stable until then ("" when the
	// model was created with Version as its stable).
	Version  string    `json:"version"`
	Previous string    `json:"previous,omitempty"`
	At       time.Time `json:"at"`
	// Revision is the state revision that made the change.
	Revision uint64 `json:"revision"`
	Actor    string `json:"actor,omitempty"`
	// Rollout is the analyzer's rollout that decided the change, if any.
	Rollout string `json:"rollout,omitempty"`
	// Reason is the decision's sentence, or the change's summary.
	Reason string `json:"reason"`
}

// MaxStableHistory bounds a model's history; the oldest entries go first.
const MaxStableHistory = 200

// Cause says why a traffic change was made: the rollout that decided it
// and the decision's sentence. It is recorded in the model's history when
// the change moves the stable version.
type Cause struct {
	Rollout string `json:"rollout,omitempty"`
	Reason  string `json:"reason,omitempty"`
	// Actor, when set, is sent as the change's actor instead of the
	// client's own (an operator acting through the analyzer).
	Actor string `json:"-"`
}

// stables returns every model's stable version.
func (s *State) stables() map[string]string {
	out := make(map[string]string, len(s.Models))
	for n, m := range s.Models {
		out[n] = m.Stable
	}
	return out
}

// recordStable appends an entry, e with the version filled in, to the
// history of every model whose stable version differs from before (a map
// from model to its stable version before the change).
func (s *State) recordStable(before map[string]string, e StableChange) {
	for _, n := range s.ModelNames() {
		m := s.Models[n]
		if m.Stable == before[n] {
			continue
		}
		c := e
		c.Version, c.Previous = m.Stable, before[n]
		m.History = append(m.History, c)
		if len(m.History) > MaxStableHistory {
			m.History = append(m.History[:0:0], m.History[len(m.History)-MaxStableHistory:]...)
		}
	}
}

// withHistory wraps a change so that it records every stable version it
// moves, with e's time, revision, actor and cause.
func withHistory(change func(*State) error, e StableChange) func(*State) error {
	return func(s *State) error {
		before := s.stables()
		if err := change(s); err != nil {
			return err
		}
		e.Revision = s.Revision + 1
		s.recordStable(before, e)
		return nil
	}
}

// PreviousStable returns the history entry that made the current stable
// version stable; its Previous is the version a revert returns to. It is
// ErrNotFound when the history does not say which version was stable
// before (the model was created with its stable version and no promotion
// has happened since).
func (m *Model) PreviousStable() (StableChange, error) {
	for i := len(m.History) - 1; i >= 0; i-- {
		e := m.History[i]
		if e.Version != m.Stable {
			break
		}
		if e.Previous != "" && e.Previous != m.Stable {
			return e, nil
		}
	}
	return StableChange{}, fmt.Errorf("%w: the history of model %q names no version that was stable before %q", ErrNotFound, m.Name, m.Stable)
}
