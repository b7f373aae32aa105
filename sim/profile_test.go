package sim

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	neg := -1.0
	cases := []struct {
		name    string
		p       Profile
		wantErr []string // substrings; nil means valid
	}{
		{"minimal profile is valid", Profile{Version: "v1"}, nil},
		{"zero latency is valid", Profile{Version: "v1", TTFT: Fixed(0), ITL: Fixed(0)}, nil},
		{"all forms are valid", Profile{Version: "v1", TTFT: LogNormalMedianP99(100, 300), ITL: Uniform(1, 2), OutputTokens: UniformCount(1, 9)}, nil},
		{"rates summing to one are valid", Profile{Version: "v1", ErrorRate: 0.5, BadAnswerRate: 0.5}, nil},
		{"version is required", Profile{}, []string{"version is required"}},
		{"rate above one", Profile{Version: "v", ErrorRate: 1.5}, []string{"error_rate must be in [0,1]"}},
		{"negative rate", Profile{Version: "v", AbortRate: -0.1}, []string{"abort_rate must be in [0,1]"}},
		{"exclusive rates over one", Profile{Version: "v", RefusalRate: 0.6, BadAnswerRate: 0.6}, []string{"sum to"}},
		{"negative fixed latency", Profile{Version: "v", TTFT: Dist{FixedMS: &neg}}, []string{"ttft.fixed_ms"}},
		{"uniform upside down", Profile{Version: "v", ITL: Uniform(5, 1)}, []string{"itl: need 0 <= min_ms <= max_ms"}},
		{"lognormal p99 below median", Profile{Version: "v", TTFT: LogNormalMedianP99(100, 50)}, []string{"ttft: need 0 < median_ms <= p99_ms"}},
		{"two forms at once", Profile{Version: "v", TTFT: Dist{FixedMS: new(float64(1)), MedianMS: new(float64(1)), P99MS: new(float64(2))}}, []string{"set one of"}},
		{"zero tokens", Profile{Version: "v", OutputTokens: FixedCount(0)}, []string{"output_tokens.fixed must be >= 1"}},
		{"errors are joined", Profile{ErrorRate: 2, ITL: Uniform(3, 2)}, []string{"version is required", "error_rate", "itl:"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.p.Validate()
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want errors %q", tc.wantErr)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %q, want it to mention %q", err, w)
				}
			}
		})
	}
}

func TestParseProfile(t *testing.T) {
	cases := []struct {
		name    string
		yaml    string
		check   func(t *testing.T, p Profile)
		wantErr string
	}{
		{
			name: "number is shorthand for fixed",
			yaml: "version: v\nttft: 50\nitl: 0\noutput_tokens: 7\n",
			check: func(t *testing.T, p Profile) {
				if *p.TTFT.FixedMS != 50 || *p.ITL.FixedMS != 0 || *p.OutputTokens.Fixed != 7 {
					t.Errorf("got ttft %v itl %v tokens %v", *p.TTFT.FixedMS, *p.ITL.FixedMS, *p.OutputTokens.Fixed)
				}
			},
		},
		{
			name: "objects read every form",
			yaml: "version: v\nttft: {median_ms: 100, p99_ms: 400}\nitl: {min_ms: 1, max_ms: 3}\noutput_tokens: {min: 2, max: 4}\nbad_answer_rate: 0.1\njudge: true\n",
			check: func(t *testing.T, p Profile) {
				if *p.TTFT.MedianMS != 100 || *p.ITL.MaxMS != 3 || *p.OutputTokens.Max != 4 || p.BadAnswerRate != 0.1 || !p.Judge {
					t.Errorf("got %+v", p)
				}
			},
		},
		{name: "unknown field is rejected", yaml: "version: v\nlatency: 3\n", wantErr: "latency"},
		{name: "unknown distribution key is rejected", yaml: "version: v\nttft: {mean_ms: 3}\n", wantErr: "mean_ms"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := ParseProfile([]byte(tc.yaml))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseProfile() error = %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseProfile() = %v", err)
			}
			tc.check(t, p)
		})
	}
}

func TestExampleProfilesAreValid(t *testing.T) {
	files, err := filepath.Glob("profiles/*.yaml")
	if err != nil || len(files) < 4 {
		t.Fatalf("want the example profiles in profiles/, got %v (%v)", files, err)
	}
	byName := map[string]Profile{}
	for _, f := range files {
		p, err := LoadProfile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Validate(); err != nil {
			t.Errorf("%s: %v", f, err)
		}
		byName[filepath.Base(f)] = p
	}
	stable, regressed := byName["stable.yaml"], byName["canary-regressed.yaml"]
	if regressed.BadAnswerRate <= stable.BadAnswerRate {
		t.Errorf("canary-regressed bad_answer_rate %v should exceed stable's %v", regressed.BadAnswerRate, stable.BadAnswerRate)
	}
	if got := *regressed.TTFT.MedianMS / *stable.TTFT.MedianMS; got < 1.29 || got > 1.31 {
		t.Errorf("canary-regressed TTFT median is %.2fx stable's, want 1.3x", got)
	}
	if s, err := New(byName["judge.yaml"]); err != nil || !s.Profile().Judge || s.Profile().Model != JudgeModel {
		t.Errorf("judge.yaml: judge mode not on (%v)", err)
	}
}

func TestBuiltinProfilesAreValid(t *testing.T) {
	for _, name := range []string{"stable", "canary-healthy", "canary-regressed", "judge"} {
		p, err := Builtin(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if _, err := Builtin("nope"); err == nil {
		t.Fatal("an unknown built-in profile was accepted")
	}
}

func TestBuiltinPoolsAnswerWithoutFailures(t *testing.T) {
	for _, name := range []string{"stable", "canary-healthy", "canary-regressed"} {
		p, err := Builtin(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if p.ErrorRate != 0 || p.RateLimitRate != 0 || p.AbortRate != 0 {
			t.Errorf("%s fails requests (error %v, rate limit %v, abort %v); only a profile that asks for failures may", name, p.ErrorRate, p.RateLimitRate, p.AbortRate)
		}
	}
}
