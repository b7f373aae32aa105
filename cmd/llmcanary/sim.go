package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/llmcanary/llmcanary/sim"
)

func init() {
	register(command{
		Name:    "sim",
		Summary: "run a simulated OpenAI-compatible inference pool (vLLM stand-in)",
		Run:     runSim,
	})
}

// simOptions are the flags of `llmcanary sim`. Flags given on the command
// line override the profile file's fields.
type simOptions struct {
	Listen  string
	Profile string

	Version       string
	Model         string
	Seed          uint64
	TTFTMS        float64
	ITLMS         float64
	Tokens        int
	ErrorRate     float64
	RateLimitRate float64
	AbortRate     float64
	RefusalRate   float64
	BadAnswerRate float64
	Judge         bool
}

func runSim(ctx context.Context, args []string) error {
	fs := newFlagSet("sim", "Serves /v1/chat/completions, /v1/completions, /v1/models, /health and /metrics like vLLM, "+
		"with latency, length, errors and answer quality taken from a profile (see sim/profiles).")
	var o simOptions
	fs.StringVar(&o.Listen, "listen", "127.0.0.1:8000", "address to listen on (port 0 picks a free one)")
	fs.StringVar(&o.Profile, "profile", "", "profile YAML file; the flags below override its fields")
	fs.StringVar(&o.Version, "version", "", "version served, announced in x-sim-served-by (required here or in the profile)")
	fs.StringVar(&o.Model, "model", "", "served model name (default "+sim.DefaultModel+")")
	fs.Uint64Var(&o.Seed, "seed", 0, "seed of the per-request plans")
	fs.Float64Var(&o.TTFTMS, "ttft-ms", 0, "fixed time to first token, ms")
	fs.Float64Var(&o.ITLMS, "itl-ms", 0, "fixed inter-token latency, ms")
	fs.IntVar(&o.Tokens, "tokens", 0, "fixed number of output tokens (before max_tokens)")
	fs.Float64Var(&o.ErrorRate, "error-rate", 0, "fraction of requests answered 500")
	fs.Float64Var(&o.RateLimitRate, "rate-limit-rate", 0, "fraction of requests answered 429")
	fs.Float64Var(&o.AbortRate, "abort-rate", 0, "fraction of requests cut mid-answer")
	fs.Float64Var(&o.RefusalRate, "refusal-rate", 0, "fraction of requests refused")
	fs.Float64Var(&o.BadAnswerRate, "bad-answer-rate", 0, "fraction of answers containing the bad-answer marker")
	fs.BoolVar(&o.Judge, "judge", false, "grade answers instead of writing them")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	p, err := o.profile(fs)
	if err != nil {
		return err
	}
	srv, err := sim.New(p)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	p = srv.Profile()
	fmt.Printf("llmcanary sim: version %s serving model %s on http://%s\n", p.Version, p.Model, l.Addr())

	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(l) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		hs.Close()
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// profile loads the profile file, if any, and applies the flags that were
// set on the command line.
func (o simOptions) profile(fs *flag.FlagSet) (sim.Profile, error) {
	var p sim.Profile
	if o.Profile != "" {
		var err error
		if p, err = sim.LoadProfile(o.Profile); err != nil {
			return p, err
		}
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "version":
			p.Version = o.Version
		case "model":
			p.Model = o.Model
		case "seed":
			p.Seed = o.Seed
		case "ttft-ms":
			p.TTFT = sim.Fixed(o.TTFTMS)
		case "itl-ms":
			p.ITL = sim.Fixed(o.ITLMS)
		case "tokens":
			p.OutputTokens = sim.FixedCount(o.Tokens)
		case "error-rate":
			p.ErrorRate = o.ErrorRate
		case "rate-limit-rate":
			p.RateLimitRate = o.RateLimitRate
		case "abort-rate":
			p.AbortRate = o.AbortRate
		case "refusal-rate":
			p.RefusalRate = o.RefusalRate
		case "bad-answer-rate":
			p.BadAnswerRate = o.BadAnswerRate
		case "judge":
			p.Judge = o.Judge
		}
	})
	return p, nil
}
