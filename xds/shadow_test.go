package xds

import (
	"strings"
	"testing"
)

func shadowModel(sh *Shadow) *Model {
	return &Model{
		Name: "m", Stable: "v1",
		Versions: []Version{{Name: "v1", Endpoints: []string{"127.0.0.1:1"}}, {Name: "v2", Endpoints: []string{"127.0.0.1:2"}}},
		Weights:  map[string]float64{"v1": 100},
		Shadow:   sh,
	}
}

func TestShadowValidation(t *testing.T) {
	tests := []struct {
		name string
		sh   Shadow
		want string // "" valid
	}{
		{"a canary at ten percent", Shadow{Version: "v2", Percent: 10}, ""},
		{"the largest share", Shadow{Version: "v2", Percent: MaxShadowPercent, MaxConcurrent: 4}, ""},
		{"basis points", Shadow{Version: "v2", Percent: 0.01}, ""},
		{"stable cannot shadow itself", Shadow{Version: "v1", Percent: 10}, "stable version"},
		{"an unknown version", Shadow{Version: "v9", Percent: 10}, "not one of"},
		{"no version", Shadow{Percent: 10}, "version is not set"},
		{"a mirror switched off keeps its version and cap", Shadow{Version: "v2", MaxConcurrent: 4}, ""},
		{"over the cap", Shadow{Version: "v2", Percent: MaxShadowPercent + 1}, "at most 50"},
		{"negative", Shadow{Version: "v2", Percent: -1}, "percent is -1"},
		{"three decimals", Shadow{Version: "v2", Percent: 1.005}, "two decimals"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sh := tt.sh
			err := shadowModel(&sh).Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("rejected: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error %v, want one saying %q", err, tt.want)
			}
		})
	}
}

func TestShadowConcurrencyDefaultsAndClonesApart(t *testing.T) {
	m := shadowModel(&Shadow{Version: "v2", Percent: 5})
	if got := m.Shadow.Concurrency(); got != DefaultShadowConcurrency {
		t.Fatalf("default concurrency %d, want %d", got, DefaultShadowConcurrency)
	}
	s := &State{Models: map[string]*Model{"m": m}}
	c := s.Clone()
	c.Models["m"].Shadow.Percent = 7
	if m.Shadow.Percent != 5 {
		t.Fatal("a clone's shadow change reached the original")
	}
}
