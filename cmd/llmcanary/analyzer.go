package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/analyzer/chsource"
	"github.com/llmcanary/llmcanary/analyzer/monitor"
	"github.com/llmcanary/llmcanary/analyzer/notify"
	"github.com/llmcanary/llmcanary/analyzer/quality"
	"github.com/llmcanary/llmcanary/analyzer/report"
	"github.com/llmcanary/llmcanary/internal/health"
	"github.com/llmcanary/llmcanary/internal/mtls"
	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/xds"
)

func init() {
	register(command{
		Name:    "analyzer",
		Summary: "run the analyzer: judge every rollout from ClickHouse and move traffic through the control plane",
		Run:     runAnalyzer,
	})
}

// analyzerOptions are the settings of `llmcanary analyzer`.
type analyzerOptions struct {
	Listen       string
	DataDir      string
	TokenFile    string
	Token        string
	ControlPlane string
	// ControlPlaneTokenFile defaults to the API's own token.
	ControlPlaneTokenFile string
	ClickHouse            string
	Database              string
	Interval              time.Duration
	Refresh               time.Duration
	PolicyFile            string
	JudgeEndpoint         string
	JudgeModel            string
	JudgeAPIKeyEnv        string
	JudgeInterval         time.Duration
	// TLS is the rollout API's certificate; ControlPlaneCA verifies an
	// https control plane (empty: the system's roots).
	TLS            mtls.ServerFiles
	ControlPlaneCA string
	// Notify are the webhooks told of every decision and state change.
	Notify notify.Flags
}

func defaultAnalyzerOptions() analyzerOptions {
	return analyzerOptions{
		Listen:         "127.0.0.1:18090",
		DataDir:        "var/analyzer",
		ControlPlane:   "http://127.0.0.1:18080",
		ClickHouse:     "127.0.0.1:9000",
		Database:       wire.Database,
		Interval:       time.Second,
		Refresh:        30 * time.Second,
		JudgeModel:     quality.DefaultJudgeModel,
		JudgeAPIKeyEnv: "LLMCANARY_JUDGE_API_KEY",
		JudgeInterval:  30 * time.Second,
	}
}

// Validate reports every invalid option at once.
func (o analyzerOptions) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(o.Listen); err != nil {
		errs = append(errs, fmt.Errorf("--listen %q: %w", o.Listen, err))
	}
	if o.DataDir == "" {
		errs = append(errs, errors.New("--data-dir is required"))
	}
	if o.Token == "" {
		errs = append(errs, errors.New("no API token: use --token-file or set LLMCANARY_API_TOKEN"))
	}
	if u, err := url.Parse(o.ControlPlane); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("--control-plane %q is not an http(s) URL", o.ControlPlane))
	}
	if _, _, err := net.SplitHostPort(o.ClickHouse); err != nil {
		errs = append(errs, fmt.Errorf("--clickhouse %q: %w", o.ClickHouse, err))
	}
	if o.Database == "" {
		errs = append(errs, errors.New("--database is required"))
	}
	if o.Interval <= 0 {
		errs = append(errs, fmt.Errorf("--interval %v must be positive", o.Interval))
	}
	if o.Refresh < o.Interval {
		errs = append(errs, fmt.Errorf("--refresh %v must be at least --interval %v", o.Refresh, o.Interval))
	}
	if o.JudgeEndpoint != "" && o.JudgeInterval <= 0 {
		errs = append(errs, fmt.Errorf("--judge-interval %v must be positive", o.JudgeInterval))
	}
	if err := o.TLS.Validate(); err != nil {
		errs = append(errs, err)
	}
	if _, err := o.Notify.Config(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (o *analyzerOptions) bind(fs *flag.FlagSet) {
	fs.StringVar(&o.Listen, "listen", o.Listen, "address of the rollout API")
	fs.StringVar(&o.DataDir, "data-dir", o.DataDir, "directory of the durable rollouts; a restart resumes every running rollout")
	fs.StringVar(&o.TokenFile, "token-file", o.TokenFile, "file holding the rollout API's bearer token (default: $LLMCANARY_API_TOKEN)")
	fs.StringVar(&o.ControlPlane, "control-plane", o.ControlPlane, "base URL of the control plane's management API")
	fs.StringVar(&o.ControlPlaneTokenFile, "control-plane-token-file", o.ControlPlaneTokenFile, "file holding the management API's token (default: the rollout API's token)")
	fs.StringVar(&o.ClickHouse, "clickhouse", o.ClickHouse, "ClickHouse native-protocol address")
	fs.StringVar(&o.Database, "database", o.Database, "ClickHouse database of the telemetry")
	fs.DurationVar(&o.Interval, "interval", o.Interval, "how often each running rollout is checked for new rows; a look decides as soon as evidence arrives")
	fs.DurationVar(&o.Refresh, "refresh", o.Refresh, "the longest a running rollout goes without a look when no new rows arrive")
	fs.StringVar(&o.PolicyFile, "policy", o.PolicyFile, "YAML policy file (default: the built-in policy)")
	fs.StringVar(&o.JudgeEndpoint, "judge-endpoint", o.JudgeEndpoint, "OpenAI-compatible base URL of the judge model; empty: no judge (user feedback only)")
	fs.StringVar(&o.JudgeModel, "judge-model", o.JudgeModel, "model name of the judge")
	fs.StringVar(&o.JudgeAPIKeyEnv, "judge-api-key-env", o.JudgeAPIKeyEnv, "environment variable holding the judge's API key, if any")
	fs.DurationVar(&o.JudgeInterval, "judge-interval", o.JudgeInterval, "pause between judge rounds when there is no backlog")
	fs.StringVar(&o.ControlPlaneCA, "control-plane-ca", o.ControlPlaneCA, "PEM CA certificate that verifies an https --control-plane (default: the system's roots)")
	bindServerTLS(fs, &o.TLS, false, "--listen")
	o.Notify.Bind(fs)
}

func runAnalyzer(ctx context.Context, args []string) error {
	o := defaultAnalyzerOptions()
	fs := newFlagSet("analyzer", `Looks at every running rollout each --interval: measures stable and canary
over the stage's window in ClickHouse, decides with always-valid sequential
tests (advance, promote, roll back, hold, pause for a human) and moves traffic
through the control plane. Serves the rollout API (HTTP/JSON, bearer token,
see analyzer/openapi.yaml) with POST /v1/feedback for user ratings, and
beside it /metrics (Prometheus), /healthz and /readyz (ready: ClickHouse
answers and the control plane takes the token). Webhooks (--notify-*) hear of
every decision and state change. Rollouts are durable in --data-dir.`)
	o.bind(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	var err error
	if o.Token, err = readToken(o.TokenFile); err != nil && o.TokenFile != "" {
		return err
	}
	if err := o.Validate(); err != nil {
		return err
	}
	cpToken := o.Token
	if o.ControlPlaneTokenFile != "" {
		b, err := os.ReadFile(o.ControlPlaneTokenFile)
		if err != nil {
			return err
		}
		cpToken = strings.TrimSpace(string(b))
	}
	policy := analyzer.DefaultPolicy()
	if o.PolicyFile != "" {
		if policy, err = analyzer.LoadPolicy(o.PolicyFile); err != nil {
			return err
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{o.ClickHouse}, DialTimeout: 5 * time.Second})
	if err != nil {
		return fmt.Errorf("clickhouse %s: %w", o.ClickHouse, err)
	}
	defer conn.Close()
	if err := conn.Ping(ctx); err != nil {
		return fmt.Errorf("clickhouse %s: %w", o.ClickHouse, err)
	}
	qstore, err := quality.OpenStore(ctx, conn, o.Database)
	if err != nil {
		return err
	}
	stages, err := chsource.NewStageLog(ctx, conn, o.Database)
	if err != nil {
		return err
	}
	store, err := analyzer.OpenStore(o.DataDir)
	if err != nil {
		return err
	}
	cpHTTP, err := mtls.HTTPClient(o.ControlPlaneCA)
	if err != nil {
		return fmt.Errorf("--control-plane-ca: %w", err)
	}
	cp := analyzer.ControlPlane{Client: &xds.Client{BaseURL: strings.TrimRight(o.ControlPlane, "/"), Token: cpToken, Actor: "analyzer", HTTP: cpHTTP}}
	source := chsource.New(conn, o.Database)
	source.KeepValues = true // A/B reports' win rates
	reg := health.NewRegistry()
	mon, err := monitor.New(store, reg)
	if err != nil {
		return err
	}
	defer store.OnChange(mon.Changed)()
	// Every decision and look into ClickHouse, for dashboards and reports.
	decisions, err := chsource.NewDecisionLog(ctx, conn, o.Database, log)
	if err != nil {
		return err
	}
	defer store.OnChange(decisions.Changed)()
	logCtx, stopLog := context.WithCancel(ctx)
	logDone := make(chan struct{})
	go func() { decisions.Run(logCtx, time.Second); close(logDone) }()
	defer func() { stopLog(); <-logDone }() // its last rows go in before the connection closes
	runner := &analyzer.Runner{
		Store: store, Source: mon.Source(source), Traffic: cp, Models: cp,
		Policy: policy, Interval: o.Interval, Refresh: o.Refresh, Log: log, Stages: stages,
	}
	stopNotify, err := startNotifier(o.Notify, store, reg, log)
	if err != nil {
		return err
	}
	defer stopNotify()
	api := analyzer.NewAPI(runner, o.Token, log)
	api.Mount(analyzer.RouteFeedback, qstore.FeedbackHandler())
	api.Mount(analyzer.RouteReport, report.Handler(store, conn, o.Database, log))

	lis, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return err
	}
	if o.TLS.Enabled() {
		certs, err := mtls.NewReloader(o.TLS, log)
		if err != nil {
			lis.Close()
			return err
		}
		// The token authorises; TLS keeps it and the feedback private.
		lis = tls.NewListener(lis, certs.Config([]string{"h2", "http/1.1"}, false))
	}
	// Ready: ClickHouse answers and the control plane takes the token.
	requests := health.NewRequestCounter("llmcanary", "analyzer", "Rollout API requests by route, method and status code.")
	reg.MustRegister(requests)
	handler := health.Beside(api.Handler(), reg, requests, false,
		health.Check{Name: "clickhouse", Fn: conn.Ping},
		health.Check{Name: "control_plane", Fn: func(ctx context.Context) error { _, err := cp.Client.Revision(ctx); return err }})
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)} // refused TLS handshakes, among others
	errc := make(chan error, 3)
	go func() { errc <- srv.Serve(lis) }()
	go func() { errc <- runner.Run(ctx) }()
	if o.JudgeEndpoint != "" {
		j, err := quality.NewJudge(quality.JudgeOptions{
			Conn: conn, Database: o.Database, Store: qstore, Endpoint: o.JudgeEndpoint,
			Model: o.JudgeModel, APIKey: os.Getenv(o.JudgeAPIKeyEnv), Interval: o.JudgeInterval, Logger: log,
			Priority: store.Canaries,
		})
		if err != nil {
			return err
		}
		go func() { errc <- j.Run(ctx) }()
	}
	log.Info("analyzer running", "api", lis.Addr().String(), "tls", o.TLS.Enabled(), "control_plane", o.ControlPlane, "clickhouse", o.ClickHouse, "interval", o.Interval, "judge", o.JudgeEndpoint)
	select {
	case <-ctx.Done():
	case err = <-errc:
		if errors.Is(err, http.ErrServerClosed) || errors.Is(err, context.Canceled) {
			err = nil
		}
	}
	shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(shut)
	return err
}

// startNotifier tells the configured webhooks of every change of the
// store's rollouts; stop sends what is queued (for up to ten seconds).
func startNotifier(f notify.Flags, store *analyzer.Store, reg prometheus.Registerer, log *slog.Logger) (stop func(), err error) {
	cfg, err := f.Config()
	if err != nil || len(cfg.Webhooks) == 0 {
		return func() {}, err
	}
	n, err := notify.New(cfg, notify.Options{Log: log, Registerer: reg})
	if err != nil {
		return nil, err
	}
	remove := store.OnChange(n.Changed)
	log.Info("notifications on", "webhooks", len(cfg.Webhooks))
	return func() {
		remove()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := n.Close(ctx); err != nil {
			log.Warn("notifications", "error", err)
		}
	}, nil
}
