package procs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// AnalyzerOptions describe one `llmcanary analyzer` process.
type AnalyzerOptions struct {
	Dir          string // logs, the policy and token files, and the data directory
	ControlPlane string // base URL of the management API
	CA           string // CA file of the management API's certificate, if it serves TLS
	Token        string // the rollout API's and the management API's token
	ClickHouse   string // native address
	PolicyYAML   string // the policy; empty: the built-in one
	// Args are extra flags, e.g. --interval.
	Args []string
}

// Analyzer is a running `llmcanary analyzer`: a real process, so tests can
// kill it at the moment that matters and start it again on its data.
type Analyzer struct {
	Addr string // the rollout API's address
	Proc *Proc

	o    AnalyzerOptions
	bin  string
	runs int
}

// StartAnalyzer starts `llmcanary analyzer` on a free loopback port and
// waits until its API accepts connections.
func StartAnalyzer(ctx context.Context, o AnalyzerOptions) (*Analyzer, error) {
	bin, err := LlmcanaryBinary()
	if err != nil {
		return nil, err
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(o.Dir, "token"), []byte(o.Token), 0o600); err != nil {
		return nil, err
	}
	if o.PolicyYAML != "" {
		if err := os.WriteFile(filepath.Join(o.Dir, "policy.yaml"), []byte(o.PolicyYAML), 0o600); err != nil {
			return nil, err
		}
	}
	a := &Analyzer{Addr: "127.0.0.1:" + strconv.Itoa(port), o: o, bin: bin}
	return a, a.start(ctx)
}

// DataDir is where the analyzer keeps its rollouts.
func (a *Analyzer) DataDir() string { return filepath.Join(a.o.Dir, "data") }

func (a *Analyzer) start(ctx context.Context) error {
	a.runs++
	args := []string{"analyzer", "--listen", a.Addr, "--data-dir", a.DataDir(),
		"--token-file", filepath.Join(a.o.Dir, "token"), "--control-plane", a.o.ControlPlane, "--clickhouse", a.o.ClickHouse}
	if a.o.CA != "" {
		args = append(args, "--control-plane-ca", a.o.CA)
	}
	if a.o.PolicyYAML != "" {
		args = append(args, "--policy", filepath.Join(a.o.Dir, "policy.yaml"))
	}
	p, err := StartProc("analyzer", filepath.Join(a.o.Dir, fmt.Sprintf("analyzer-%d.log", a.runs)), a.bin, append(args, a.o.Args...)...)
	if err != nil {
		return err
	}
	a.Proc = p
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := WaitTCP(wctx, a.Addr); err != nil {
		p.Kill()
		return fmt.Errorf("analyzer did not start: %w\n%s", err, p.Tail(30))
	}
	return nil
}

// Restart starts the process again, after it exited, on the same port
// and data directory.
func (a *Analyzer) Restart(ctx context.Context) error {
	if !a.Proc.Exited() {
		return fmt.Errorf("analyzer restart: pid %d still runs", a.Proc.Pid())
	}
	return a.start(ctx)
}
