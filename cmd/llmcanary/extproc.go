package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/extproc/chwriter"
	"github.com/llmcanary/llmcanary/internal/health"
	"github.com/llmcanary/llmcanary/internal/mtls"
)

func init() {
	register(command{
		Name:    "extproc",
		Summary: "run the ext_proc telemetry service Envoy streams every request to",
		Run:     runExtproc,
	})
}

// extprocOptions are the settings of `llmcanary extproc`.
type extprocOptions struct {
	Listen        string   // gRPC address Envoy's ext_proc cluster points at
	MetricsListen string   // Prometheus /metrics; empty turns it off
	ClickHouse    string   // native-protocol address; empty logs records instead
	Database      string   // ClickHouse database
	SpoolDir      string   // where records wait while ClickHouse is away
	RetentionDays int      // days of rows kept; 0 keeps everything
	CaptureRate   float64  // fraction of requests whose text is kept
	CaptureMax    int      // bytes kept of each prompt and completion
	Refusals      []string // refusal patterns; empty means the defaults
	// DrainTimeout bounds how long a stop (SIGTERM, SIGINT) waits for the
	// open streams to end before it cuts them; LLM answers stream for tens
	// of seconds, so the default leaves room for the longest generations.
	DrainTimeout time.Duration
	// ReusePort lets a second replica listen on the same address
	// (SO_REUSEPORT), so the kernel hands new connections to whichever
	// still listens while the other drains.
	ReusePort bool
	LogLevel  string
	// TLS is the service's certificate and the CA of Envoy's client
	// certificates: with them nobody but an Envoy of the fleet can stream
	// timings that steer a rollout.
	TLS mtls.ServerFiles
}

func defaultExtprocOptions() extprocOptions {
	return extprocOptions{
		Listen:        "127.0.0.1:9002",
		MetricsListen: "127.0.0.1:9003",
		SpoolDir:      filepath.Join(os.TempDir(), "llmcanary-extproc-spool"),
		CaptureMax:    extproc.DefaultCaptureMaxBytes,
		DrainTimeout:  5 * time.Minute,
		LogLevel:      "info",
	}
}

// Validate reports every invalid option at once.
func (o extprocOptions) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(o.Listen); err != nil {
		errs = append(errs, fmt.Errorf("--listen %q: %w", o.Listen, err))
	}
	if o.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(o.MetricsListen); err != nil {
			errs = append(errs, fmt.Errorf("--metrics-listen %q: %w", o.MetricsListen, err))
		}
	}
	if o.ClickHouse != "" {
		if _, _, err := net.SplitHostPort(o.ClickHouse); err != nil {
			errs = append(errs, fmt.Errorf("--clickhouse %q: %w", o.ClickHouse, err))
		}
		if o.SpoolDir == "" {
			errs = append(errs, errors.New("--spool-dir is required with --clickhouse"))
		}
	}
	if o.RetentionDays < 0 {
		errs = append(errs, errors.New("--retention-days must not be negative"))
	}
	if o.DrainTimeout < 0 {
		errs = append(errs, errors.New("--drain-timeout must not be negative"))
	}
	if err := o.capture().Validate(); err != nil {
		errs = append(errs, err)
	}
	if _, err := extproc.NewRefusalDetector(o.Refusals); err != nil {
		errs = append(errs, err)
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.LogLevel)); err != nil {
		errs = append(errs, fmt.Errorf("--log-level: %w", err))
	}
	if err := o.TLS.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (o extprocOptions) capture() extproc.CaptureOptions {
	return extproc.CaptureOptions{Rate: o.CaptureRate, MaxBytes: o.CaptureMax}
}

// stringList is a repeatable flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, " | ") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func (o *extprocOptions) bind(fs *flag.FlagSet) {
	fs.StringVar(&o.Listen, "listen", o.Listen, "gRPC address for Envoy's ext_proc filter")
	fs.StringVar(&o.MetricsListen, "metrics-listen", o.MetricsListen, "address serving Prometheus /metrics, /healthz and /readyz (empty: off)")
	fs.StringVar(&o.ClickHouse, "clickhouse", o.ClickHouse, "ClickHouse native-protocol address, e.g. 127.0.0.1:9000 (empty: log records instead)")
	fs.StringVar(&o.Database, "database", o.Database, "ClickHouse database (default llmcanary)")
	fs.StringVar(&o.SpoolDir, "spool-dir", o.SpoolDir, "directory where records wait while ClickHouse is unreachable")
	fs.IntVar(&o.RetentionDays, "retention-days", o.RetentionDays, "days of telemetry kept in ClickHouse (0: all)")
	fs.Float64Var(&o.CaptureRate, "capture-rate", o.CaptureRate, "fraction of requests whose prompt and completion are kept, redacted (0: off)")
	fs.IntVar(&o.CaptureMax, "capture-max-bytes", o.CaptureMax, "bytes kept of each captured prompt and completion")
	fs.Var((*stringList)(&o.Refusals), "refusal-pattern", "regular expression marking a refusal (repeatable; replaces the defaults)")
	fs.DurationVar(&o.DrainTimeout, "drain-timeout", o.DrainTimeout, "on SIGTERM, how long open streams may still run before they are cut (each still gets its row)")
	fs.BoolVar(&o.ReusePort, "reuse-port", o.ReusePort, "listen with SO_REUSEPORT so a second replica can share --listen (rolling restarts)")
	fs.StringVar(&o.LogLevel, "log-level", o.LogLevel, "debug, info, warn or error")
	bindServerTLS(fs, &o.TLS, true, "--listen")
}

func runExtproc(ctx context.Context, args []string) error {
	fs := newFlagSet("extproc", "Receives every request Envoy proxies (ext_proc, observability mode), times the streamed "+
		"tokens and writes one row per request to ClickHouse. Envoy never waits for it.")
	o := defaultExtprocOptions()
	o.bind(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if err := o.Validate(); err != nil {
		return err
	}
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(o.LogLevel))
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))

	reg := health.NewRegistry()

	sink, closeSink, err := openSink(ctx, o, reg, log)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := closeSink(cctx); err != nil {
			log.Error("closing the telemetry sink", "err", err)
		}
	}()
	refusals := o.Refusals
	if len(refusals) == 0 {
		refusals = nil // the defaults
	}
	srv, err := extproc.NewServer(extproc.Options{
		Sink: sink, Registerer: reg, RefusalPatterns: refusals, Capture: o.capture(), Logger: log,
	})
	if err != nil {
		return err
	}

	var lc net.ListenConfig
	if o.ReusePort {
		lc.Control = reusePort
	}
	lis, err := lc.Listen(ctx, "tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	var gopts []grpc.ServerOption
	if o.TLS.Enabled() {
		certs, err := mtls.NewReloader(o.TLS, log)
		if err != nil {
			lis.Close()
			return err
		}
		gopts = append(gopts, grpc.Creds(credentials.NewTLS(certs.Config([]string{"h2"}, true))))
		if !certs.RequiresClientCert() {
			log.Warn("TLS without a client CA: anyone who reaches --listen can stream telemetry (set --tls-client-ca)")
		}
	} else {
		log.Warn("plaintext gRPC: anyone who reaches --listen can stream made-up telemetry; for development only (set --tls-cert, --tls-key, --tls-client-ca)")
	}
	g := grpc.NewServer(gopts...)
	srv.Register(g)
	errc := make(chan error, 2)
	go func() { errc <- g.Serve(lis) }()
	log.Info("ext_proc service listening", "grpc", lis.Addr().String(), "tls", o.TLS.Enabled(), "clickhouse", o.ClickHouse)

	var hs *http.Server
	if o.MetricsListen != "" {
		ml, err := net.Listen("tcp", o.MetricsListen)
		if err != nil {
			g.Stop()
			return fmt.Errorf("metrics listen: %w", err)
		}
		mux := http.NewServeMux()
		// Ready while records are kept: in ClickHouse, or spooled while it
		// is away (chwriter.Writer.Ready); the log sink is always ready.
		var checks []health.Check
		if w, ok := sink.(interface{ Ready(context.Context) error }); ok {
			checks = append(checks, health.Check{Name: "clickhouse", Fn: w.Ready})
		}
		health.Mount(mux, reg, true, checks...)
		hs = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := hs.Serve(ml); !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("metrics: %w", err)
			}
		}()
		log.Info("metrics listening", "addr", ml.Addr().String())
	}

	select {
	case err = <-errc:
	case <-ctx.Done():
	}
	// A stop loses no record: the listener closes and Envoy gets GOAWAY, so
	// new requests go elsewhere (another replica) while the open streams,
	// each an answer still streaming, run to their end; past the bound they
	// are cut and recorded with what was seen. The sink then flushes.
	log.Info("draining: taking no new streams, waiting for the open ones", "bound", o.DrainTimeout)
	go g.GracefulStop()
	dctx, cancel := context.WithTimeout(context.Background(), o.DrainTimeout)
	start := time.Now()
	cut := srv.Drain(dctx, g.Stop)
	cancel()
	if cut > 0 {
		log.Warn("drain bound passed: cut the open streams, recorded as client_cancel with what was seen", "streams", cut, "bound", o.DrainTimeout)
	} else {
		log.Info("drained: every stream ended", "after", time.Since(start).Round(time.Millisecond))
	}
	if hs != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		hs.Shutdown(sctx)
		cancel()
	}
	return err
}

// reusePort sets SO_REUSEPORT on a listening socket.
func reusePort(network, address string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("set SO_REUSEPORT: %w", serr)
	}
	return nil
}

// openSink returns where records go: the ClickHouse writer when an address
// is given, else a sink that logs each record.
func openSink(ctx context.Context, o extprocOptions, reg prometheus.Registerer, log *slog.Logger) (extproc.Sink, func(context.Context) error, error) {
	if o.ClickHouse == "" {
		log.Warn("no --clickhouse address: records are only logged")
		return logSink{log: log}, func(context.Context) error { return nil }, nil
	}
	w, err := chwriter.New(ctx, chwriter.Options{
		Addr:          o.ClickHouse,
		Database:      o.Database,
		SpoolDir:      o.SpoolDir,
		RetentionDays: o.RetentionDays,
		Registerer:    reg,
		Logger:        log,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("clickhouse sink: %w", err)
	}
	return w, w.Close, nil
}

// logSink writes each record as one log line. slog handlers serialise
// their writes, so it is safe for concurrent use; it blocks only as long
// as the log write itself.
type logSink struct{ log *slog.Logger }

func (s logSink) Write(r extproc.Record) {
	s.log.Info("request",
		"request_id", r.RequestID, "model", r.Model, "version", r.Version, "status", r.Status,
		"failure", r.Failure, "ttft_ms", r.TTFTMs, "itl_mean_ms", r.ITLMeanMs, "total_ms", r.TotalMs,
		"prompt_tokens", r.PromptTokens, "completion_tokens", r.CompletionTokens, "cost_usd", r.CostUSD,
		"refusal", r.Refusal, "forced", r.Forced)
}
