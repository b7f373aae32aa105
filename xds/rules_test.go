package xds

import (
	"errors"
	"testing"
)

func rulesState() *State {
	return &State{Models: map[string]*Model{"m": {
		Name: "m", Stable: "v1",
		Versions: []Version{
			{Name: "v1", Endpoints: []string{"127.0.0.1:8001"}},
			{Name: "v2", Endpoints: []string{"127.0.0.1:8002"}},
			{Name: "v3", Endpoints: []string{"127.0.0.1:8003"}},
		},
		Weights:           map[string]float64{"v1": 90, "v2": 10},
		CategoryOverrides: map[string]string{"code": "v3", "chat": "v2"},
	}}}
}

func TestDesiredStateRules(t *testing.T) {
	tests := []struct {
		name   string
		change func(s *State) error
		want   error
		check  func(t *testing.T, s *State)
	}{
		{"promoting the version a shadow stage mirrored to ends its shadow setting", func(s *State) error {
			s.Models["m"].Shadow = &Shadow{Version: "v2", Percent: 0, MaxConcurrent: 4}
			if err := s.SetWeights("m", map[string]float64{"v2": 100}, "v2"); err != nil {
				return err
			}
			return s.Models["m"].Validate()
		}, nil, func(t *testing.T, s *State) {
			if m := s.Models["m"]; m.Stable != "v2" || m.Shadow != nil {
				t.Fatalf("stable %s, shadow %+v; want v2 stable and no shadow", m.Stable, m.Shadow)
			}
		}},
		{"promoting another version keeps the shadow setting", func(s *State) error {
			s.Models["m"].Shadow = &Shadow{Version: "v2", Percent: 5}
			return s.SetWeights("m", map[string]float64{"v3": 100}, "v3")
		}, nil, func(t *testing.T, s *State) {
			if m := s.Models["m"]; m.Shadow == nil || m.Shadow.Version != "v2" || m.Shadow.Percent != 5 {
				t.Fatalf("shadow %+v; want v2 at 5 %% kept", m.Shadow)
			}
		}},
		{"a new version joins with no traffic", func(s *State) error {
			return s.PutVersion("m", "v4", Version{Name: "v4", Endpoints: []string{"127.0.0.1:8004"}})
		}, nil, func(t *testing.T, s *State) {
			if _, ok := s.Models["m"].Version("v4"); !ok || s.Models["m"].Weights["v4"] != 0 {
				t.Fatalf("v4 missing or with traffic: %+v", s.Models["m"])
			}
		}},
		{"a version put again is replaced, not duplicated", func(s *State) error {
			return s.PutVersion("m", "v2", Version{Name: "v2", Endpoints: []string{"127.0.0.1:9002"}})
		}, nil, func(t *testing.T, s *State) {
			v, _ := s.Models["m"].Version("v2")
			if len(s.Models["m"].Versions) != 3 || v.Endpoints[0] != "127.0.0.1:9002" {
				t.Fatalf("versions %+v", s.Models["m"].Versions)
			}
		}},
		{"a version body naming another version is invalid", func(s *State) error {
			return s.PutVersion("m", "v4", Version{Name: "v5"})
		}, ErrInvalid, nil},
		{"a version of a missing model is not found", func(s *State) error {
			return s.PutVersion("nope", "v1", Version{Name: "v1"})
		}, ErrNotFound, nil},
		{"the stable version cannot be deleted", func(s *State) error { return s.DeleteVersion("m", "v1") }, ErrConflict, nil},
		{"a version with traffic must be drained first", func(s *State) error { return s.DeleteVersion("m", "v2") }, ErrConflict, nil},
		{"a drained version leaves with its category overrides", func(s *State) error { return s.DeleteVersion("m", "v3") }, nil,
			func(t *testing.T, s *State) {
				m := s.Models["m"]
				if _, ok := m.Version("v3"); ok || m.CategoryOverrides["code"] != "" || m.CategoryOverrides["chat"] != "v2" {
					t.Fatalf("model after delete %+v", m)
				}
			}},
		{"deleting an unknown version is not found", func(s *State) error { return s.DeleteVersion("m", "v9") }, ErrNotFound, nil},
		{"weights for an unknown version are invalid", func(s *State) error {
			return s.SetWeights("m", map[string]float64{"v1": 50, "v9": 50}, "")
		}, ErrInvalid, nil},
		{"weights replace the old ones at once and may name a new stable", func(s *State) error {
			return s.SetWeights("m", map[string]float64{"v2": 100}, "v2")
		}, nil, func(t *testing.T, s *State) {
			m := s.Models["m"]
			if m.Stable != "v2" || len(m.Weights) != 1 || m.Weights["v2"] != 100 {
				t.Fatalf("model after weights %+v", m)
			}
		}},
		{"weights of a missing model are not found", func(s *State) error {
			return s.SetWeights("nope", map[string]float64{"v1": 100}, "")
		}, ErrNotFound, nil},
		{"a model body naming another model is invalid", func(s *State) error { return s.PutModel("m", Model{Name: "x"}) }, ErrInvalid, nil},
		{"deleting a missing model is not found", func(s *State) error { return s.DeleteModel("nope") }, ErrNotFound, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := rulesState()
			err := tc.change(s)
			if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			if tc.check != nil {
				tc.check(t, s)
			}
		})
	}
}
