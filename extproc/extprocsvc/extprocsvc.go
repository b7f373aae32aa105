// Package extprocsvc runs the telemetry service: the ext_proc gRPC server of
// package extproc writing to ClickHouse through extproc/chwriter, with its
// Prometheus metrics, TLS and graceful drain. `llmcanary extproc` and the
// local stack (internal/local) both start it with Start; it lives here,
// not in package extproc, because chwriter imports extproc.
package extprocsvc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/extproc/chwriter"
	"github.com/llmcanary/llmcanary/internal/config"
	"github.com/llmcanary/llmcanary/internal/health"
	"github.com/llmcanary/llmcanary/internal/lifecycle"
	"github.com/llmcanary/llmcanary/internal/mtls"
)

// Options configure the telemetry service. The JSON names are the flags of
// `llmcanary extproc` and the keys of its config file
// (docs/configuration.md); fields tagged "-" are for callers in process.
type Options struct {
	// Listen is the gRPC address Envoy's ext_proc cluster points at.
	Listen string `json:"listen"`
	// MetricsListen serves Prometheus /metrics; empty turns it off.
	MetricsListen string `json:"metrics-listen"`
	// ClickHouse is the native-protocol address; empty logs each record
	// instead.
	ClickHouse string `json:"clickhouse"`
	// ClickHouseCluster names the ClickHouse cluster, as the servers'
	// remote_servers config does, that the telemetry is sharded over;
	// ClickHouseShards are its shards' native-protocol addresses, one per
	// shard in remote_servers order (repeated, or comma-separated). With
	// them ClickHouse stays empty. See chwriter.Options.Cluster.
	ClickHouseCluster string   `json:"clickhouse-cluster"`
	ClickHouseShards  []string `json:"clickhouse-shards"`
	// ClickHouseReplicaPath makes the tables ReplicatedMergeTree under
	// this coordinator path, e.g. /clickhouse/tables/{shard}/llmcanary;
	// the servers need ZooKeeper or ClickHouse Keeper. Empty: MergeTree.
	ClickHouseReplicaPath string `json:"clickhouse-replica-path"`
	// Database is the ClickHouse database; empty means wire.Database.
	Database string `json:"database"`
	// SpoolDir is where records wait while ClickHouse is away.
	SpoolDir string `json:"spool-dir"`
	// RetentionDays of rows are kept; 0 keeps everything.
	RetentionDays int `json:"retention-days"`
	// CaptureRate is the fraction of requests whose text is kept;
	// CaptureMax the bytes kept of each prompt and completion.
	CaptureRate float64 `json:"capture-rate"`
	CaptureMax  int     `json:"capture-max-bytes"`
	// Refusals are the refusal patterns; empty means the defaults.
	Refusals []string `json:"refusal-pattern"`
	// DrainTimeout bounds how long a stop waits for the open streams to
	// end before it cuts them; LLM answers stream for tens of seconds, so
	// the default leaves room for the longest generations.
	DrainTimeout config.Duration `json:"drain-timeout"`
	// ReusePort lets a second replica listen on the same address
	// (SO_REUSEPORT), so the kernel hands new connections to whichever
	// still listens while the other drains.
	ReusePort bool `json:"reuse-port"`
	// LogLevel is debug, info, warn or error; it applies when Logger is
	// nil.
	LogLevel string `json:"log-level"`
	// TLS is the service's certificate and the CA of Envoy's client
	// certificates: with them nobody but an Envoy of the fleet can stream
	// timings that steer a rollout.
	TLS mtls.ServerFiles `json:"tls"`

	// FlushInterval is the ClickHouse writer's; zero means its default.
	FlushInterval time.Duration `json:"-"`
	// Logger receives the service's logs; nil means a text logger on
	// stderr at LogLevel.
	Logger *slog.Logger `json:"-"`
}

// Defaults returns the defaults of `llmcanary extproc`.
func Defaults() Options {
	return Options{
		Listen:        "127.0.0.1:9002",
		MetricsListen: "127.0.0.1:9003",
		SpoolDir:      filepath.Join(os.TempDir(), "llmcanary-extproc-spool"),
		CaptureMax:    extproc.DefaultCaptureMaxBytes,
		DrainTimeout:  config.Duration(5 * time.Minute),
		LogLevel:      "info",
	}
}

// Validate reports every invalid option at once, by its flag name.
func (o Options) Validate() error {
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
	errs = append(errs, o.validateCluster()...)
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
	if _, err := o.level(); err != nil {
		errs = append(errs, fmt.Errorf("--log-level: %w", err))
	}
	if err := o.TLS.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (o Options) capture() extproc.CaptureOptions {
	return extproc.CaptureOptions{Rate: o.CaptureRate, MaxBytes: o.CaptureMax}
}

func (o Options) level() (slog.Level, error) {
	var lvl slog.Level
	err := lvl.UnmarshalText([]byte(o.LogLevel))
	return lvl, err
}

// Service is a running telemetry service.
type Service struct {
	// Addr is the bound gRPC address (useful with port 0); MetricsAddr the
	// bound /metrics address, empty when off.
	Addr        string
	MetricsAddr string
	// Writer is the ClickHouse writer; nil when records are only logged.
	Writer *chwriter.Writer
	// Registry holds the service's metrics.
	Registry *prometheus.Registry

	o         Options
	log       *slog.Logger
	sink      extproc.Sink
	closeSink func(context.Context) error
	creds     []grpc.ServerOption
	metrics   *http.Server
	errc      chan error
	// Stop, Done and Err.
	*lifecycle.Lifecycle

	mu   sync.Mutex
	srv  *extproc.Server
	grpc *grpc.Server
}

// Start opens the sink (the ClickHouse writer, or a log of records without
// ClickHouse) and serves ext_proc and /metrics until ctx ends or Stop is
// called; then it drains the open streams (see extproc.Server.Drain) and
// flushes the sink.
func Start(ctx context.Context, o Options) (*Service, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	log := o.Logger
	if log == nil {
		lvl, _ := o.level()
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	}
	s := &Service{o: o, log: log, errc: make(chan error, 2)}
	s.Registry = health.NewRegistry()
	if err := s.openSink(ctx); err != nil {
		return nil, err
	}
	fail := func(err error) (*Service, error) {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = s.closeSink(cctx)
		if s.metrics != nil {
			s.metrics.Close()
		}
		return nil, err
	}
	if o.TLS.Enabled() {
		certs, err := mtls.NewReloader(o.TLS, log)
		if err != nil {
			return fail(err)
		}
		s.creds = append(s.creds, grpc.Creds(credentials.NewTLS(certs.Config([]string{"h2"}, true))))
		if !certs.RequiresClientCert() {
			log.Warn("TLS without a client CA: anyone who reaches --listen can stream telemetry (set --tls-client-ca)")
		}
	} else {
		log.Warn("plaintext gRPC: anyone who reaches --listen can stream made-up telemetry; for development only (set --tls-cert, --tls-key, --tls-client-ca)")
	}
	var lc net.ListenConfig
	if o.ReusePort {
		lc.Control = reusePort
	}
	lis, err := lc.Listen(ctx, "tcp", o.Listen)
	if err != nil {
		return fail(fmt.Errorf("listen: %w", err))
	}
	if err := s.serve(lis, s.Registry); err != nil {
		lis.Close()
		return fail(err)
	}
	log.Info("ext_proc service listening", "grpc", s.Addr, "tls", o.TLS.Enabled(), "clickhouse", o.ClickHouse,
		"clickhouse_cluster", o.ClickHouseCluster, "clickhouse_shards", o.shards())
	if o.MetricsListen != "" {
		ml, err := net.Listen("tcp", o.MetricsListen)
		if err != nil {
			s.grpcServer().Stop()
			return fail(fmt.Errorf("metrics listen: %w", err))
		}
		mux := http.NewServeMux()
		// Ready while records are kept: in ClickHouse, or spooled while it
		// is away (chwriter.Writer.Ready); the log sink is always ready.
		var checks []health.Check
		if w, ok := s.sink.(interface{ Ready(context.Context) error }); ok {
			checks = append(checks, health.Check{Name: "clickhouse", Fn: w.Ready})
		}
		health.Mount(mux, s.Registry, true, checks...)
		s.metrics = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		s.MetricsAddr = ml.Addr().String()
		go func() {
			if err := s.metrics.Serve(ml); !errors.Is(err, http.ErrServerClosed) {
				s.errc <- fmt.Errorf("metrics: %w", err)
			}
		}()
		log.Info("metrics listening", "addr", s.MetricsAddr)
	}
	ctx, s.Lifecycle = lifecycle.New(ctx)
	go s.run(ctx)
	return s, nil
}

// serve starts a new ext_proc server on lis; reg receives its metrics (nil
// after a restart: the first server's keep counting).
func (s *Service) serve(lis net.Listener, reg prometheus.Registerer) error {
	refusals := s.o.Refusals
	if len(refusals) == 0 {
		refusals = nil // the defaults
	}
	srv, err := extproc.NewServer(extproc.Options{
		Sink: s.sink, Registerer: reg, RefusalPatterns: refusals, Capture: s.o.capture(), Logger: s.log,
	})
	if err != nil {
		return err
	}
	g := grpc.NewServer(append(append([]grpc.ServerOption(nil), s.creds...), extproc.ServerOptions()...)...)
	srv.Register(g)
	s.mu.Lock()
	s.srv, s.grpc = srv, g
	s.mu.Unlock()
	s.Addr = lis.Addr().String()
	go func() {
		// Serve returns nil after Stop (Kill, a drain); anything else ends
		// the service.
		if err := g.Serve(lis); err != nil {
			s.errc <- err
		}
	}()
	return nil
}

func (s *Service) grpcServer() *grpc.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.grpc
}

// run waits for the end and stops without losing a record: the listener
// closes and Envoy gets GOAWAY, so new requests go elsewhere (another
// replica) while the open streams, each an answer still streaming, run to
// their end; past DrainTimeout they are cut and recorded with what was
// seen. The sink then flushes.
func (s *Service) run(ctx context.Context) {
	var stopped error
	select {
	case <-ctx.Done():
	case stopped = <-s.errc:
		s.log.Error("telemetry service stopped", "error", stopped)
	}
	s.mu.Lock()
	srv, g := s.srv, s.grpc
	s.mu.Unlock()
	bound := s.o.DrainTimeout.D()
	s.log.Info("draining: taking no new streams, waiting for the open ones", "bound", bound)
	go g.GracefulStop()
	dctx, cancel := context.WithTimeout(context.Background(), bound)
	start := time.Now()
	cut := srv.Drain(dctx, g.Stop)
	cancel()
	if cut > 0 {
		s.log.Warn("drain bound passed: cut the open streams, recorded as client_cancel with what was seen", "streams", cut, "bound", bound)
	} else {
		s.log.Info("drained: every stream ended", "after", time.Since(start).Round(time.Millisecond))
	}
	if s.metrics != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = s.metrics.Shutdown(sctx)
		cancel()
	}
	cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.closeSink(cctx); err != nil {
		s.log.Error("closing the telemetry sink", "error", err)
	}
	s.Finish(stopped)
}

// Kill stops the gRPC server at once, as a crash would, without draining;
// the sink keeps what it already has and the service can Restart.
func (s *Service) Kill() { s.grpcServer().Stop() }

// Restart serves again on the same address after Kill, with a new ext_proc
// server whose metrics count on in the same registry.
func (s *Service) Restart() error {
	var lis net.Listener
	var err error
	for i := 0; i < 50; i++ { // the old socket may linger for a moment
		if lis, err = net.Listen("tcp", s.Addr); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("extproc listen: %w", err)
	}
	return s.serve(lis, nil)
}

// openSink opens where records go: the ClickHouse writer when an address
// or a cluster is given, else a sink that logs each record.
func (s *Service) openSink(ctx context.Context) error {
	if s.o.ClickHouse == "" && s.o.ClickHouseCluster == "" {
		s.log.Warn("no --clickhouse address: records are only logged")
		s.sink, s.closeSink = logSink{log: s.log}, func(context.Context) error { return nil }
		return nil
	}
	w, err := chwriter.New(ctx, chwriter.Options{
		Addr:          s.o.ClickHouse,
		Cluster:       s.o.ClickHouseCluster,
		Shards:        s.o.shards(),
		ReplicaPath:   s.o.ClickHouseReplicaPath,
		Database:      s.o.Database,
		SpoolDir:      s.o.SpoolDir,
		RetentionDays: s.o.RetentionDays,
		FlushInterval: s.o.FlushInterval,
		Registerer:    s.Registry,
		Logger:        s.log,
	})
	if err != nil {
		return fmt.Errorf("clickhouse sink: %w", err)
	}
	s.Writer, s.sink, s.closeSink = w, w, w.Close
	return nil
}

// logSink writes each record as one log line. slog handlers serialise
// their writes, so it is safe for concurrent use; it blocks only as long
// as the log write itself.
type logSink struct{ log *slog.Logger }

var _ extproc.Sink = logSink{}

func (s logSink) Write(r extproc.Record) {
	s.log.Info("request",
		"request_id", r.RequestID, "model", r.Model, "version", r.Version, "status", r.Status,
		"failure", r.Failure, "ttft_ms", r.TTFTMs, "itl_mean_ms", r.ITLMeanMs, "total_ms", r.TotalMs,
		"prompt_tokens", r.PromptTokens, "completion_tokens", r.CompletionTokens, "cost_usd", r.CostUSD,
		"refusal", r.Refusal, "forced", r.Forced)
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
