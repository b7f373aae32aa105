package xds

import "fmt"

// The changes the management API makes to the desired state, with its
// rules: a version joins with no traffic, the stable version cannot be
// deleted, a version must be drained (weight 0) before it is deleted.
// Each changes the state it is called on (a copy the StateStore hands to
// Update) and returns ErrNotFound, ErrConflict or ErrInvalid for a change
// that breaks a rule; Update then validates the whole state.

// PutModel creates or replaces the model name with m. The model's history
// is the control plane's: a replaced model keeps its own, and a history
// in m is ignored.
func (s *State) PutModel(name string, m Model) error {
	if m.Name != name {
		return fmt.Errorf("%w: body names model %q but the path names %q", ErrInvalid, m.Name, name)
	}
	m.History = nil
	if old, ok := s.Models[name]; ok {
		m.History = old.History
	}
	s.Models[name] = &m
	return nil
}

// DeleteModel removes the model name.
func (s *State) DeleteModel(name string) error {
	if _, ok := s.Models[name]; !ok {
		return fmt.Errorf("%w: model %q does not exist", ErrNotFound, name)
	}
	delete(s.Models, name)
	return nil
}

// PutVersion adds v to model, or replaces the version of that name. A new
// version joins with no traffic; weights move it in.
func (s *State) PutVersion(model, version string, v Version) error {
	if v.Name != version {
		return fmt.Errorf("%w: body names version %q but the path names %q", ErrInvalid, v.Name, version)
	}
	m, ok := s.Models[model]
	if !ok {
		return fmt.Errorf("%w: model %q does not exist; create it with PUT /v1/models/%s", ErrNotFound, model, model)
	}
	for i := range m.Versions {
		if m.Versions[i].Name == version {
			m.Versions[i] = v
			return nil
		}
	}
	m.Versions = append(m.Versions, v)
	return nil
}

// DeleteVersion removes a drained version that is not stable, with its
// weight and the category overrides that name it.
func (s *State) DeleteVersion(model, version string) error {
	m, ok := s.Models[model]
	if !ok {
		return fmt.Errorf("%w: model %q does not exist", ErrNotFound, model)
	}
	if _, ok := m.Version(version); !ok {
		return fmt.Errorf("%w: model %q has no version %q", ErrNotFound, model, version)
	}
	if m.Stable == version {
		return fmt.Errorf("%w: version %q is the stable version of %q; make another stable first", ErrConflict, version, model)
	}
	if m.Weights[version] > 0 {
		return fmt.Errorf("%w: version %q still has %v%% of the traffic; set its weight to 0 first", ErrConflict, version, m.Weights[version])
	}
	kept := m.Versions[:0]
	for _, v := range m.Versions {
		if v.Name != version {
			kept = append(kept, v)
		}
	}
	m.Versions = kept
	delete(m.Weights, version)
	for cat, v := range m.CategoryOverrides {
		if v == version {
			delete(m.CategoryOverrides, cat)
		}
	}
	return nil
}

// SetCohorts replaces the model's cohorts; empty lists remove them.
func (s *State) SetCohorts(model string, c Cohorts) error {
	m, ok := s.Models[model]
	if !ok {
		return fmt.Errorf("%w: model %q does not exist", ErrNotFound, model)
	}
	m.Cohorts = nil
	if !c.OptIn.Empty() || !c.Excluded.Empty() {
		m.Cohorts = &c
	}
	return nil
}

// SetWeights replaces the model's weights at once, and its stable version
// when stable is not empty. Every weight must name a version of the model.
func (s *State) SetWeights(model string, weights map[string]float64, stable string) error {
	m, ok := s.Models[model]
	if !ok {
		return fmt.Errorf("%w: model %q does not exist", ErrNotFound, model)
	}
	for v := range weights {
		if _, ok := m.Version(v); !ok {
			return fmt.Errorf("%w: weight for unknown version %q of model %q", ErrInvalid, v, model)
		}
	}
	m.Weights = weights
	if stable != "" {
		m.Stable = stable
		// A version that becomes stable is no one's shadow any more (its
		// shadow stage ended, or ends with the promotion).
		if m.Shadow != nil && m.Shadow.Version == stable {
			m.Shadow = nil
		}
	}
	return nil
}
