// Package analyzersvc runs the analyzer: the rollout runner of package
// analyzer over the ClickHouse telemetry (analyzer/chsource), the rollout
// API with the feedback endpoint, and the quality judge
// (analyzer/quality). `llmcanary analyzer` and the demo both start it with
// Start; it lives here, not in package analyzer, because chsource imports
// analyzer.
package analyzersvc

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/analyzer/chsource"
	"github.com/llmcanary/llmcanary/analyzer/monitor"
	"github.com/llmcanary/llmcanary/analyzer/notify"
	"github.com/llmcanary/llmcanary/analyzer/quality"
	"github.com/llmcanary/llmcanary/analyzer/report"
	"github.com/llmcanary/llmcanary/internal/config"
	"github.com/llmcanary/llmcanary/internal/health"
	"github.com/llmcanary/llmcanary/internal/lifecycle"
	"github.com/llmcanary/llmcanary/internal/mtls"
	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/xds"
)

// Options configure the analyzer. The JSON names are the flags of
// `llmcanary analyzer` and the keys of its config file
// (docs/configuration.md); fields tagged "-" are for callers in process.
type Options struct {
	// Listen is the rollout API's address.
	Listen string `json:"listen"`
	// DataDir holds the durable rollouts; a restart resumes every running
	// rollout.
	DataDir string `json:"data-dir"`
	// TokenFile holds the rollout API's bearer token; Token is the token
	// itself (the command reads the file, or $LLMCANARY_API_TOKEN).
	TokenFile string `json:"token-file"`
	Token     string `json:"-"`
	// ControlPlane is the base URL of the control plane's management API.
	ControlPlane string `json:"control-plane"`
	// ControlPlaneTokenFile holds the management API's token; empty: the
	// rollout API's token.
	ControlPlaneTokenFile string `json:"control-plane-token-file"`
	// ControlPlaneCA verifies an https control plane; empty: the system's
	// roots.
	ControlPlaneCA string `json:"control-plane-ca"`
	// ClickHouse is the native-protocol address; Database the telemetry's
	// database.
	ClickHouse string `json:"clickhouse"`
	Database   string `json:"database"`
	// Interval is how often each running rollout is checked for new rows;
	// Refresh the longest a running rollout goes without a look when no new
	// rows arrive.
	Interval config.Duration `json:"interval"`
	Refresh  config.Duration `json:"refresh"`
	// LookTimeout bounds one look's queries; zero: Interval. A look reads
	// every row of the rollout's window, about 440 000 rows a second, so
	// windows of millions of rows need more than the default second.
	LookTimeout config.Duration `json:"look-timeout"`
	// PolicyFile is the YAML policy; empty: the built-in policy, or
	// Policy when set.
	PolicyFile string           `json:"policy"`
	Policy     *analyzer.Policy `json:"-"`
	// JudgeEndpoint is the OpenAI-compatible base URL of the judge model;
	// empty: no judge (user feedback only).
	JudgeEndpoint  string          `json:"judge-endpoint"`
	JudgeModel     string          `json:"judge-model"`
	JudgeAPIKeyEnv string          `json:"judge-api-key-env"`
	JudgeInterval  config.Duration `json:"judge-interval"`
	// JudgeBatchSize and JudgeConcurrency: see quality.JudgeOptions; zero
	// means its defaults.
	JudgeBatchSize   int `json:"-"`
	JudgeConcurrency int `json:"-"`
	// GatewayURL is the base URL of an Envoy of the fleet and
	// ForceKeyFile holds a key of its wasm filter's force keys: the
	// pre-flight stages send their forced requests there. ForceKey is the
	// key itself (the command reads the file). Empty: no pre-flight.
	GatewayURL   string `json:"gateway-url"`
	ForceKeyFile string `json:"force-key-file"`
	ForceKey     string `json:"-"`
	// TLS is the rollout API's certificate.
	TLS mtls.ServerFiles `json:"tls"`
	// Notify are the webhooks told of every decision and state change.
	Notify notify.Flags `json:"notify"`
	// EtcdEndpoints, when set, keep the rollouts in etcd under EtcdPrefix
	// instead of DataDir, and make this analyzer one member of a group
	// that elects its leader there with a lease of LeaderLease: only the
	// leader acts; the others serve reads and refuse writes. Member is this
	// analyzer's identity in the election (default: host name and
	// --listen). Empty: one analyzer on DataDir.
	EtcdEndpoints Endpoints       `json:"etcd-endpoints"`
	EtcdPrefix    string          `json:"etcd-prefix"`
	LeaderLease   config.Duration `json:"leader-lease"`
	Member        string          `json:"member"`
	// Logger receives the analyzer's logs; nil means a text logger on
	// stderr.
	Logger *slog.Logger `json:"-"`
}

// Defaults returns the defaults of `llmcanary analyzer`.
func Defaults() Options {
	return Options{
		Listen:         "127.0.0.1:18090",
		DataDir:        "var/analyzer",
		ControlPlane:   "http://127.0.0.1:18080",
		ClickHouse:     "127.0.0.1:9000",
		Database:       wire.Database,
		Interval:       config.Duration(time.Second),
		Refresh:        config.Duration(30 * time.Second),
		JudgeModel:     quality.DefaultJudgeModel,
		JudgeAPIKeyEnv: "LLMCANARY_JUDGE_API_KEY",
		JudgeInterval:  config.Duration(30 * time.Second),
		EtcdPrefix:     "/llmcanary/analyzer",
		LeaderLease:    config.Duration(10 * time.Second),
	}
}

// Endpoints is a list of etcd client URLs: a repeatable flag whose values
// may also be comma-separated.
type Endpoints []string

var _ config.Repeated = (*Endpoints)(nil)

func (e *Endpoints) String() string { return strings.Join(*e, ",") }

// Repeated makes the key a list in a config file.
func (*Endpoints) Repeated() {}

// Set adds the comma-separated endpoints of v.
func (e *Endpoints) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*e = append(*e, p)
		}
	}
	return nil
}

// Validate reports every invalid option at once, by its flag name.
func (o Options) Validate() error {
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
		errs = append(errs, fmt.Errorf("--interval %v must be positive", o.Interval.D()))
	}
	if o.LookTimeout < 0 {
		errs = append(errs, fmt.Errorf("--look-timeout %v must not be negative", o.LookTimeout.D()))
	}
	if o.Refresh < o.Interval {
		errs = append(errs, fmt.Errorf("--refresh %v must be at least --interval %v", o.Refresh.D(), o.Interval.D()))
	}
	if o.JudgeEndpoint != "" && o.JudgeInterval <= 0 {
		errs = append(errs, fmt.Errorf("--judge-interval %v must be positive", o.JudgeInterval.D()))
	}
	if o.GatewayURL != "" {
		if u, err := url.Parse(o.GatewayURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("--gateway-url %q is not an http(s) URL", o.GatewayURL))
		}
		if o.ForceKey == "" {
			errs = append(errs, errors.New("--gateway-url needs --force-key-file: pre-flight requests are forced"))
		}
	}
	if err := o.TLS.Validate(); err != nil {
		errs = append(errs, err)
	}
	if _, err := o.Notify.Config(); err != nil {
		errs = append(errs, err)
	}
	if len(o.EtcdEndpoints) > 0 {
		for _, ep := range o.EtcdEndpoints {
			if u, err := url.Parse(ep); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				errs = append(errs, fmt.Errorf("--etcd-endpoints %q is not an http(s) URL", ep))
			}
		}
		if strings.Trim(o.EtcdPrefix, "/") == "" {
			errs = append(errs, fmt.Errorf("--etcd-prefix %q must name a key prefix", o.EtcdPrefix))
		}
		if o.LeaderLease < config.Duration(2*time.Second) {
			errs = append(errs, fmt.Errorf("--leader-lease %v must be at least 2s (etcd's shortest lease)", o.LeaderLease.D()))
		}
	}
	return errors.Join(errs...)
}

// Service is a running analyzer.
type Service struct {
	// Runner judges the rollouts; in process callers start and operate
	// rollouts through it.
	Runner *analyzer.Runner
	// Addr is the rollout API's bound address; URL its base URL, https
	// when it serves TLS.
	Addr string
	URL  string

	// Elector is the analyzer's membership of its group (nil: one
	// analyzer on its data directory).
	Elector *analyzer.Elector

	// Stop, Done and Err.
	*lifecycle.Lifecycle

	conn      driver.Conn
	http      *http.Server
	decisions *chsource.DecisionLog
	notifier  func() // stops the webhooks after sending what is queued
	unwatch   []func()
}

// Start opens ClickHouse, the rollout store and the control plane client,
// and runs the runner, the rollout API and (with a judge endpoint) the
// judge until ctx ends or Stop is called.
func Start(ctx context.Context, o Options) (*Service, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	cp, policy, err := o.controlPlaneAndPolicy()
	if err != nil {
		return nil, err
	}
	store, etcd, err := o.openStore(ctx)
	if err != nil {
		return nil, err
	}
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{o.ClickHouse}, DialTimeout: 5 * time.Second})
	if err != nil {
		closeEtcd(etcd)
		return nil, fmt.Errorf("clickhouse %s: %w", o.ClickHouse, err)
	}
	s := &Service{conn: conn}
	fail := func(err error) (*Service, error) {
		conn.Close()
		closeEtcd(etcd)
		return nil, err
	}
	if err := conn.Ping(ctx); err != nil {
		return fail(fmt.Errorf("clickhouse %s: %w", o.ClickHouse, err))
	}
	qstore, err := quality.OpenScoreStore(ctx, conn, o.Database)
	if err != nil {
		return fail(err)
	}
	stages, err := chsource.NewStageLog(ctx, conn, o.Database)
	if err != nil {
		return fail(err)
	}
	var judge *quality.Judge
	if o.JudgeEndpoint != "" {
		judge, err = quality.NewJudge(quality.JudgeOptions{
			Conn: conn, Database: o.Database, Store: qstore, Endpoint: o.JudgeEndpoint,
			Model: o.JudgeModel, APIKey: os.Getenv(o.JudgeAPIKeyEnv), Interval: o.JudgeInterval.D(),
			BatchSize: o.JudgeBatchSize, Concurrency: o.JudgeConcurrency, Logger: log,
			Priority: store.Canaries,
		})
		if err != nil {
			return fail(err)
		}
	}
	// The same judge grades both answers of each shadow pair.
	var shadowJudge *quality.ShadowJudge
	if judge != nil {
		if shadowJudge, err = quality.NewShadowJudge(ctx, judge); err != nil {
			return fail(err)
		}
	}
	source := chsource.New(conn, o.Database)
	source.KeepValues = true // A/B reports' win rates
	reg := health.NewRegistry()
	mon, err := monitor.New(store, reg)
	if err != nil {
		return fail(err)
	}
	s.unwatch = append(s.unwatch, store.OnChange(mon.Changed))
	// Every decision and look into ClickHouse, for dashboards and reports.
	s.decisions, err = chsource.NewDecisionLog(ctx, conn, o.Database, log)
	if err != nil {
		return fail(err)
	}
	s.unwatch = append(s.unwatch, store.OnChange(s.decisions.Changed))
	s.notifier, err = startNotifier(o.Notify, store, reg, log)
	if err != nil {
		return fail(err)
	}
	s.Runner = &analyzer.Runner{
		Store: store, Source: mon.Source(source), Traffic: cp, Models: cp, Pairs: source,
		Policy: policy, Interval: o.Interval.D(), Refresh: o.Refresh.D(), QueryTimeout: o.LookTimeout.D(), Log: log, Stages: stages,
	}
	if o.GatewayURL != "" {
		s.Runner.Gateway = &analyzer.PreflightGateway{URL: o.GatewayURL, ForceKey: o.ForceKey}
	}
	if judge != nil {
		s.Runner.Judge = judge
	}
	api := analyzer.NewAPI(s.Runner, o.Token, log)
	api.Mount(analyzer.RouteFeedback, qstore.FeedbackHandler())
	api.Mount(analyzer.RouteReport, report.Handler(store, conn, o.Database, log))
	lis, err := o.listen(log)
	if err != nil {
		return fail(err)
	}
	s.Addr = lis.Addr().String()
	s.URL = "http://" + s.Addr
	if o.TLS.Enabled() {
		s.URL = "https://" + s.Addr
	}
	// Ready: ClickHouse answers and the control plane takes the token;
	// in a group, etcd answers too (a standby is ready: it serves reads).
	checks := []health.Check{
		{Name: "clickhouse", Fn: conn.Ping},
		{Name: "control_plane", Fn: func(ctx context.Context) error { _, err := cp.Client.Revision(ctx); return err }},
	}
	if etcd != nil {
		s.Elector = &analyzer.Elector{Client: etcd, Prefix: strings.TrimRight(o.EtcdPrefix, "/") + "/leader", TTL: o.LeaderLease.D(),
			Self: analyzer.Member{ID: o.member(s.Addr), URL: advertised(s.URL)}, Fence: store.(analyzer.Fencer), Log: log}
		s.Runner.Leading = s.Elector.Check
		checks = append(checks, health.Check{Name: "leadership", Fn: s.leadership})
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "llmcanary_analyzer_leader",
		Help: "1 while this analyzer acts on the rollouts (the only one, or the elected leader of a group), 0 while it is a standby.",
	}, func() float64 {
		if s.Elector == nil || s.Elector.Leading() {
			return 1
		}
		return 0
	}))
	requests := health.NewRequestCounter("llmcanary", "analyzer", "Rollout API requests by route, method and status code.")
	reg.MustRegister(requests)
	handler := health.Beside(api.Handler(), reg, requests, false, checks...)
	s.http = &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)} // refused TLS handshakes, among others

	ctx, s.Lifecycle = lifecycle.New(ctx)
	errc := make(chan error, 3)
	go func() { errc <- s.http.Serve(lis) }()
	// The runner and the judge act: always with one analyzer, in the
	// leader's terms in a group.
	lead := func(ctx context.Context) error {
		s.reconcile(ctx, store, log)
		var judges sync.WaitGroup
		if judge != nil {
			judges.Go(func() { _ = judge.Run(ctx) })
			judges.Go(func() { _ = shadowJudge.Run(ctx) })
		}
		err := s.Runner.Run(ctx)
		judges.Wait()
		return err
	}
	leadDone := make(chan struct{})
	go func() {
		defer close(leadDone)
		if s.Elector == nil {
			errc <- lead(ctx)
			return
		}
		errc <- s.Elector.Run(ctx, func(ctx context.Context) {
			if err := lead(ctx); err != nil {
				log.Error("analyzer runner", "error", err)
			}
		})
	}()
	logDone := make(chan struct{})
	go func() { s.decisions.Run(ctx, o.Interval.D()); close(logDone) }()
	log.Info("analyzer running", "api", s.Addr, "tls", o.TLS.Enabled(), "control_plane", o.ControlPlane, "clickhouse", o.ClickHouse,
		"interval", o.Interval.D(), "judge", o.JudgeEndpoint, "etcd", strings.Join(o.EtcdEndpoints, ","))
	go func() {
		var err error
		select {
		case <-ctx.Done():
		case err = <-errc:
			if errors.Is(err, http.ErrServerClosed) || errors.Is(err, context.Canceled) {
				err = nil
			}
		}
		s.Cancel() // the runner and the judge end with ctx
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.http.Shutdown(shut)
		for _, f := range s.unwatch {
			f()
		}
		<-leadDone // a leader resigns and revokes its lease before etcd closes
		s.notifier()
		<-logDone // its last rows go in before the connection closes
		conn.Close()
		closeEtcd(etcd)
		s.Finish(err)
	}()
	return s, nil
}

// reconcile inserts the decision log rows that an analyzer stopped
// between storing a change and inserting its rows left out, for every
// rollout active or changed in the last hour, before this one acts.
func (s *Service) reconcile(ctx context.Context, store analyzer.Store, log *slog.Logger) {
	all, err := store.List()
	if err != nil {
		log.Warn("decision log: rollouts not reconciled", "error", err)
		return
	}
	for _, ro := range all {
		if !ro.Status.Active() && time.Since(ro.Updated) > time.Hour {
			continue
		}
		n, err := s.decisions.Reconcile(ctx, ro)
		switch {
		case err != nil:
			log.Warn("decision log: rollout not reconciled", "rollout", ro.ID, "error", err)
		case n > 0:
			log.Info("decision log: rows left out by a stopped analyzer inserted", "rollout", ro.ID, "rows", n)
		}
	}
}

// rolloutStore is the store as the service uses it: the runner's, and
// the active canaries for the judge.
type rolloutStore interface {
	analyzer.Store
	Canaries() []string
}

var (
	_ rolloutStore = (*analyzer.RolloutStore)(nil)
	_ rolloutStore = (*analyzer.EtcdStore)(nil)
)

// openStore opens the rollouts: in etcd with --etcd-endpoints (returning
// the client, closed with the service), else in --data-dir.
func (o Options) openStore(ctx context.Context) (rolloutStore, *clientv3.Client, error) {
	if len(o.EtcdEndpoints) == 0 {
		st, err := analyzer.OpenRolloutStore(o.DataDir)
		return st, nil, err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: o.EtcdEndpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop(), Context: ctx})
	if err != nil {
		return nil, nil, fmt.Errorf("etcd %v: %w", []string(o.EtcdEndpoints), err)
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cli.Get(sctx, "health"); err != nil {
		cli.Close()
		return nil, nil, fmt.Errorf("etcd %v does not answer: %w", []string(o.EtcdEndpoints), err)
	}
	st, err := analyzer.NewEtcdStore(cli, o.EtcdPrefix)
	if err != nil {
		cli.Close()
		return nil, nil, err
	}
	return st, cli, nil
}

func closeEtcd(c *clientv3.Client) {
	if c != nil {
		c.Close()
	}
}

// member is this analyzer's identity in its group: --member, or the host
// name and the API's address.
func (o Options) member(addr string) string {
	if o.Member != "" {
		return o.Member
	}
	host, _ := os.Hostname()
	return host + "/" + addr
}

// advertised is the API's URL as other hosts reach it: a wildcard listen
// address (0.0.0.0, ::) becomes the host name.
func advertised(base string) string {
	u, err := url.Parse(base)
	if err != nil {
		return base
	}
	host, port, err := net.SplitHostPort(u.Host)
	if ip := net.ParseIP(host); err == nil && ip != nil && ip.IsUnspecified() {
		if name, err := os.Hostname(); err == nil {
			u.Host = net.JoinHostPort(name, port)
		}
	}
	return u.String()
}

// leadership is the readiness check of a group member: ok while leading;
// a standby is ready and says who leads (health.Degraded); an etcd that
// does not answer makes it not ready.
func (s *Service) leadership(ctx context.Context) error {
	if s.Elector.Leading() {
		return nil
	}
	m, ok, err := s.Elector.Leader(ctx)
	switch {
	case err != nil:
		return err
	case !ok:
		return health.Degraded("standby; no analyzer leads right now")
	}
	return health.Degraded(fmt.Sprintf("standby; the leader is %s at %s", m.ID, m.URL))
}

// controlPlaneAndPolicy returns the client of the control plane the
// runner moves traffic through, and the base policy.
func (o Options) controlPlaneAndPolicy() (analyzer.ControlPlaneClient, analyzer.Policy, error) {
	var cp analyzer.ControlPlaneClient
	token := o.Token
	if o.ControlPlaneTokenFile != "" {
		b, err := os.ReadFile(o.ControlPlaneTokenFile)
		if err != nil {
			return cp, analyzer.Policy{}, err
		}
		token = strings.TrimSpace(string(b))
	}
	hc, err := mtls.HTTPClient(o.ControlPlaneCA)
	if err != nil {
		return cp, analyzer.Policy{}, fmt.Errorf("--control-plane-ca: %w", err)
	}
	cp.Client = &xds.Client{BaseURL: strings.TrimRight(o.ControlPlane, "/"), Token: token, Actor: "analyzer", HTTP: hc}
	policy := analyzer.DefaultPolicy()
	switch {
	case o.Policy != nil:
		policy = *o.Policy
	case o.PolicyFile != "":
		if policy, err = analyzer.LoadPolicy(o.PolicyFile); err != nil {
			return cp, analyzer.Policy{}, err
		}
	}
	return cp, policy, nil
}

// listen opens the rollout API's listener, over TLS when configured: the
// token authorises, TLS keeps it and the feedback private.
func (o Options) listen(log *slog.Logger) (net.Listener, error) {
	lis, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return nil, err
	}
	if !o.TLS.Enabled() {
		return lis, nil
	}
	certs, err := mtls.NewReloader(o.TLS, log)
	if err != nil {
		lis.Close()
		return nil, err
	}
	return tls.NewListener(lis, certs.Config([]string{"h2", "http/1.1"}, false)), nil
}

// startNotifier tells the configured webhooks of every change of the
// store's rollouts; stop sends what is queued (for up to ten seconds).
func startNotifier(f notify.Flags, store interface {
	OnChange(f func(before, after *analyzer.Rollout)) (remove func())
}, reg prometheus.Registerer, log *slog.Logger) (stop func(), err error) {
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
