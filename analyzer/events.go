package analyzer

// NewEvents returns the history entries after has and before had not
// (before is nil for a new rollout): what one persisted change added. The
// history folds a repeated hold into its last entry (Repeats > 0) and
// drops its oldest entries past MaxHistory, so lengths alone do not tell.
// The notifier and the decision log use it on every store change.
func NewEvents(before, after *Rollout) []Event {
	if after == nil {
		return nil
	}
	if before == nil {
		return after.History
	}
	nb, na := len(before.History), len(after.History)
	switch {
	case na > nb:
		return after.History[nb:]
	case na == 0:
		return nil
	}
	last := after.History[na-1]
	if last.Repeats > 0 || nb == 0 {
		return nil
	}
	prev := before.History[nb-1]
	if prev.At.Equal(last.At) && prev.Kind == last.Kind && prev.Code == last.Code && prev.Reason == last.Reason {
		return nil
	}
	return after.History[na-1:]
}

// NewDecision returns the decision a persisted change brought (the
// rollout's Last, taken at a look since before's), or nil.
func NewDecision(before, after *Rollout) *Decision {
	if after == nil || after.Last == nil {
		return nil
	}
	if before != nil && before.Last != nil && before.Last.At.Equal(after.Last.At) {
		return nil
	}
	return after.Last
}
