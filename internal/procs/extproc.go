package procs

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/llmcanary/llmcanary/internal/mtls"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// LlmcanaryBinary returns the llmcanary binary: $LLMCANARY_BIN when it
// names a file, else one built once per process from this module (so the
// tests run the code they were compiled with, never a stale bin/).
func LlmcanaryBinary() (string, error) {
	binOnce.Do(func() {
		if p := os.Getenv("LLMCANARY_BIN"); p != "" {
			if _, err := os.Stat(p); err != nil {
				binErr = fmt.Errorf("LLMCANARY_BIN=%s: %w", p, ErrBinaryMissing)
				return
			}
			binPath = p
			return
		}
		dir, err := os.MkdirTemp("", "llmcanary-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "llmcanary")
		cmd := exec.Command("go", "build", "-o", binPath, "github.com/llmcanary/llmcanary/cmd/llmcanary")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("build llmcanary: %v\n%s", err, out)
		}
	})
	return binPath, binErr
}

// RemoveBuiltLlmcanaryBinary deletes a binary LlmcanaryBinary built (not
// one given by $LLMCANARY_BIN). Call it from TestMain after the tests.
func RemoveBuiltLlmcanaryBinary() {
	if binPath != "" && os.Getenv("LLMCANARY_BIN") != binPath {
		os.RemoveAll(filepath.Dir(binPath))
	}
}

// ExtprocOptions describe one `llmcanary extproc` process.
type ExtprocOptions struct {
	Dir        string // log and, unless SpoolDir is set, the spool
	Listen     string // gRPC address; default a free loopback port
	ClickHouse string // native address
	SpoolDir   string // default Dir/spool
	// Args are extra flags, e.g. --drain-timeout.
	Args []string
	// TLS, when set, is passed as --tls-cert, --tls-key, --tls-client-ca.
	TLS mtls.ServerFiles
}

// Extproc is a running `llmcanary extproc` process: a real process, so
// tests can stop it with real signals.
type Extproc struct {
	Addr        string // gRPC address Envoy's ext_proc cluster points at
	MetricsAddr string // Prometheus /metrics
	Proc        *Proc

	o    ExtprocOptions
	bin  string
	runs int
}

// StartExtproc starts `llmcanary extproc` on free loopback ports and waits
// until its gRPC port accepts connections.
func StartExtproc(ctx context.Context, o ExtprocOptions) (*Extproc, error) {
	bin, err := LlmcanaryBinary()
	if err != nil {
		return nil, err
	}
	if o.SpoolDir == "" {
		o.SpoolDir = filepath.Join(o.Dir, "spool")
	}
	ports, err := FreePorts(2)
	if err != nil {
		return nil, err
	}
	if o.Listen == "" {
		o.Listen = "127.0.0.1:" + strconv.Itoa(ports[0])
	}
	e := &Extproc{
		Addr:        o.Listen,
		MetricsAddr: "127.0.0.1:" + strconv.Itoa(ports[1]),
		o:           o, bin: bin,
	}
	return e, e.start(ctx)
}

func (e *Extproc) start(ctx context.Context) error {
	e.runs++
	args := append([]string{"extproc", "--listen", e.Addr, "--metrics-listen", e.MetricsAddr,
		"--clickhouse", e.o.ClickHouse, "--spool-dir", e.o.SpoolDir, "--log-level", "debug"}, e.o.Args...)
	if f := e.o.TLS; f.Enabled() {
		args = append(args, "--tls-cert", f.Cert, "--tls-key", f.Key)
		if f.ClientCA != "" {
			args = append(args, "--tls-client-ca", f.ClientCA)
		}
	}
	p, err := StartProc("extproc", filepath.Join(e.o.Dir, fmt.Sprintf("extproc-%d.log", e.runs)), e.bin, args...)
	if err != nil {
		return err
	}
	e.Proc = p
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		if err := WaitTCP(wctx, e.Addr); err == nil {
			return nil
		} else if p.Exited() || wctx.Err() != nil {
			p.Kill()
			return fmt.Errorf("extproc did not start: %w\n%s", err, p.Tail(30))
		}
	}
}

// Restart starts the process again, after it exited, on the same ports
// and spool directory.
func (e *Extproc) Restart(ctx context.Context) error {
	if !e.Proc.Exited() {
		return fmt.Errorf("extproc restart: pid %d still runs", e.Proc.Pid())
	}
	return e.start(ctx)
}

// Signal sends sig to the process (only the process, not its group).
func (e *Extproc) Signal(sig syscall.Signal) error {
	if err := syscall.Kill(e.Proc.Pid(), sig); err != nil {
		return fmt.Errorf("signal extproc: %w", err)
	}
	return nil
}

// Metric returns the sum of a Prometheus series' samples (every label
// set) from the process's /metrics.
func (e *Extproc) Metric(ctx context.Context, name string) (float64, error) {
	all, err := e.Metrics(ctx)
	if err != nil {
		return 0, err
	}
	v, ok := all[name]
	if !ok {
		return 0, fmt.Errorf("metric %s not exported", name)
	}
	return v, nil
}

// Metrics reads the process's /metrics once and returns each series'
// sum over its label sets, by name.
func (e *Extproc) Metrics(ctx context.Context) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+e.MetricsAddr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	// Uncompressed: a caller polling the metrics (the gateway benchmark
	// waits on them) must not make the service spend its CPU on gzip.
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	sums := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		// name{label="value", …} sample; a label value may hold spaces.
		i := strings.LastIndexByte(line, ' ')
		if i < 0 || strings.HasPrefix(line, "#") {
			continue
		}
		k, v := line[:i], line[i+1:]
		if j := strings.IndexAny(k, "{ "); j >= 0 {
			k = k[:j]
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil {
			return nil, fmt.Errorf("metric %s: %w", k, err)
		}
		sums[k] += f
	}
	return sums, nil
}
