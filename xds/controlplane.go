package xds

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	"github.com/llmcanary/llmcanary/internal/config"
	"github.com/llmcanary/llmcanary/internal/health"
	"github.com/llmcanary/llmcanary/internal/mtls"
)

// Options configure the control plane. The JSON names are the flags of
// `llmcanary control` and the keys of its config file
// (docs/configuration.md); fields tagged "-" are for callers in process.
type Options struct {
	// XDSListen is the gRPC address Envoys dial for ADS.
	XDSListen string `json:"xds-listen"`
	// APIListen is the management API's HTTP address.
	APIListen string `json:"api-listen"`
	// DataDir holds the durable desired state, unless Etcd has endpoints.
	DataDir string `json:"data-dir"`
	// Etcd, with endpoints, keeps the desired state in etcd instead of
	// DataDir: every replica on the same endpoints and prefix serves it.
	Etcd EtcdOptions `json:"etcd,omitempty"`
	// TokenFile holds the management API's bearer token; Token is the
	// token itself, for callers in process (the command reads
	// $LLMCANARY_API_TOKEN into it when there is no file).
	TokenFile string `json:"token-file,omitempty"`
	Token     string `json:"-"`
	// TLS is the control plane's certificate, served on both ports, and
	// the CA of the Envoys' client certificates, required on the xDS port
	// only (the API authorises by token). The files are reread when they
	// change. Unset: plaintext, for development only.
	TLS mtls.ServerFiles `json:"tls,omitempty"`

	ListenerAddress   string          `json:"listener-address"`
	ListenerPort      uint32          `json:"listener-port"`
	StreamIdleTimeout config.Duration `json:"stream-idle-timeout"`
	// Wasm and ExtProc add the gateway's filters; nil leaves one out.
	Wasm    *WasmOptions    `json:"wasm,omitempty"`
	ExtProc *ExtProcOptions `json:"extproc,omitempty"`
	// Logger receives the control plane's logs; nil means slog.Default().
	Logger *slog.Logger `json:"-"`
}

// DefaultOptions returns the defaults of `llmcanary control`.
func DefaultOptions() Options {
	g := DefaultGateway()
	return Options{
		XDSListen:         "127.0.0.1:18000",
		APIListen:         "127.0.0.1:18080",
		DataDir:           "llmcanary-data",
		Etcd:              EtcdOptions{Prefix: DefaultEtcdPrefix, DialTimeout: config.Duration(5 * time.Second)},
		ListenerAddress:   g.ListenerAddress,
		ListenerPort:      g.ListenerPort,
		StreamIdleTimeout: config.Duration(g.StreamIdleTimeout),
	}
}

// Validate reports every problem with the options, joined.
func (o *Options) Validate() error {
	var errs []error
	for name, addr := range map[string]string{"--xds-listen": o.XDSListen, "--api-listen": o.APIListen} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %w", name, addr, err))
		}
	}
	if o.DataDir == "" && !o.Etcd.Enabled() {
		errs = append(errs, errors.New("--data-dir (or --etcd-endpoints) is required: the desired state must survive a restart"))
	}
	if err := o.Etcd.Validate(); err != nil {
		errs = append(errs, err)
	}
	if o.Token == "" && o.TokenFile == "" {
		errs = append(errs, errors.New("a management API token is required (--token-file or LLMCANARY_API_TOKEN)"))
	}
	if o.ListenerPort == 0 {
		errs = append(errs, errors.New("--listener-port is required"))
	}
	if o.StreamIdleTimeout <= 0 {
		errs = append(errs, errors.New("--stream-idle-timeout must be positive"))
	}
	if o.Wasm != nil && o.Wasm.Path == "" {
		errs = append(errs, errors.New("wasm.path (--wasm) is required when the wasm filter is configured"))
	}
	if o.ExtProc != nil && o.ExtProc.Address == "" {
		errs = append(errs, errors.New("extproc.address (--extproc) is required when ext_proc is configured"))
	}
	if err := o.TLS.Validate(); err != nil {
		errs = append(errs, err)
	}
	if o.Wasm != nil && o.Wasm.CategoryHeader != "" && !o.Wasm.CategoryHeaderTrusted {
		errs = append(errs, errors.New("wasm.category_header is read only from a trusted hop: set wasm.category_header_trusted once the hop in front of Envoy sets it and drops the client's own"))
	}
	return errors.Join(errs...)
}

func (o *Options) token() (string, error) {
	if o.TokenFile == "" {
		return o.Token, nil
	}
	b, err := os.ReadFile(o.TokenFile)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("token file %s is empty", o.TokenFile)
	}
	return t, nil
}

// ControlPlane is a running control plane: the xDS server and the
// management API over one durable store.
type ControlPlane struct {
	Store     Store
	Publisher *Publisher
	// XDSAddr and APIAddr are the bound addresses (useful with port 0);
	// APIURL is the API's base URL, https when it serves TLS.
	XDSAddr string
	APIAddr string
	APIURL  string
	// Metrics is what GET /metrics on the API's address serves.
	Metrics *prometheus.Registry

	grpc       *grpc.Server
	http       *http.Server
	cancel     context.CancelFunc
	done       chan struct{}
	closeStore func()
}

// Start loads the durable state, publishes it, and starts serving xDS and
// the API. After a restart the fleet gets back exactly the last accepted
// state, with the same revision.
func Start(ctx context.Context, o Options) (*ControlPlane, error) {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	token, err := o.token()
	if err != nil {
		return nil, err
	}
	g := DefaultGateway()
	g.ListenerAddress, g.ListenerPort, g.StreamIdleTimeout = o.ListenerAddress, o.ListenerPort, o.StreamIdleTimeout.D()
	if g.Extensions, err = Extensions(o.Wasm, o.ExtProc); err != nil {
		return nil, err
	}
	store, closeStore, err := openStore(ctx, o, log)
	if err != nil {
		return nil, err
	}
	started := false
	defer func() {
		if !started {
			closeStore()
		}
	}()
	pub := NewPublisher(g, log)
	if err := pub.Publish(store.State()); err != nil {
		return nil, fmt.Errorf("publish stored state: %w", err)
	}
	gopts := []grpc.ServerOption{
		grpc.MaxConcurrentStreams(1000000),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 5 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	}
	var certs *mtls.Reloader
	if o.TLS.Enabled() {
		if certs, err = mtls.NewReloader(o.TLS, log); err != nil {
			return nil, err
		}
		gopts = append(gopts, grpc.Creds(credentials.NewTLS(certs.Config([]string{"h2"}, true))))
		if !certs.RequiresClientCert() {
			log.Warn("xDS over TLS without a client CA: anyone who reaches the port can pose as an Envoy (set tls.client_ca, --tls-client-ca)")
		}
	} else {
		log.Warn("xDS and the management API in plaintext: for development only (set --tls-cert, --tls-key, --tls-client-ca)")
	}
	xl, err := net.Listen("tcp", o.XDSListen)
	if err != nil {
		return nil, fmt.Errorf("xds listen: %w", err)
	}
	al, err := net.Listen("tcp", o.APIListen)
	if err != nil {
		xl.Close()
		return nil, fmt.Errorf("api listen: %w", err)
	}
	scheme := "http"
	if certs != nil {
		// The API asks for no client certificate: the bearer token
		// authorises its callers, as over plaintext.
		al, scheme = tls.NewListener(al, certs.Config([]string{"h2", "http/1.1"}, false)), "https"
	}
	ctx, cancel := context.WithCancel(ctx)
	gs := grpc.NewServer(gopts...)
	RegisterServer(ctx, gs, pub, log)
	// Envoys bootstrapped with several replicas health-check each one
	// (grpc.health.v1) to pick where their ADS stream goes.
	healthpb.RegisterHealthServer(gs, grpchealth.NewServer())
	reg := health.NewRegistry()
	handler, err := observe(reg, store, pub, NewAPI(store, pub, token, log).Handler())
	if err != nil {
		cancel()
		xl.Close()
		al.Close()
		return nil, err
	}
	hs := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)} // refused TLS handshakes, among others
	cp := &ControlPlane{
		Store: store, Publisher: pub,
		XDSAddr: xl.Addr().String(), APIAddr: al.Addr().String(), APIURL: scheme + "://" + al.Addr().String(), Metrics: reg,
		grpc: gs, http: hs, cancel: cancel, done: make(chan struct{}), closeStore: closeStore,
	}
	started = true
	store.Follow(ctx, pub.Publish)
	errc := make(chan error, 2)
	go func() { errc <- gs.Serve(xl) }()
	go func() { errc <- hs.Serve(al) }()
	go func() {
		defer close(cp.done)
		select {
		case <-ctx.Done():
		case err := <-errc:
			if err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("control plane server stopped", "error", err)
			}
		}
		cp.shutdown()
	}()
	for _, ext := range g.Extensions {
		if r, ok := ext.(KeyReloader); ok && o.Wasm.ForceKeysFile != "" {
			go watchKeys(ctx, r, pub, log)
		}
	}
	log.Info("control plane serving", "xds", cp.XDSAddr, "api", cp.APIAddr, "revision", store.State().Revision, "store", storeName(o))
	return cp, nil
}

// openStore opens the desired state's store the options name: etcd when it
// has endpoints, else the file in DataDir. The returned function closes it.
func openStore(ctx context.Context, o Options, log *slog.Logger) (Store, func(), error) {
	if !o.Etcd.Enabled() {
		s, err := OpenStateStore(o.DataDir)
		return s, func() {}, err
	}
	s, err := OpenEtcdStore(ctx, o.Etcd, log)
	if err != nil {
		return nil, nil, err
	}
	return s, func() { s.Close() }, nil
}

func storeName(o Options) string {
	if o.Etcd.Enabled() {
		return "etcd " + strings.Join(o.Etcd.Endpoints, ",") + " " + o.Etcd.Prefix
	}
	return "file " + o.DataDir
}

// watchKeys rereads the force keys file every two seconds and republishes
// when the accepted keys changed: rotation without restarting anything.
func watchKeys(ctx context.Context, r KeyReloader, pub *Publisher, log *slog.Logger) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		changed, err := r.ReloadKeys()
		if err != nil {
			log.Error("cannot reload force keys; keeping the previous ones", "error", err)
			continue
		}
		if changed {
			log.Info("force keys changed; republishing")
			if err := pub.Republish(); err != nil {
				log.Error("republish after key change", "error", err)
			}
		}
	}
}

func (c *ControlPlane) shutdown() {
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = c.http.Shutdown(sctx)
	// xDS streams never end on their own; Stop closes them so Envoys notice
	// at once and keep their last configuration.
	c.grpc.Stop()
	c.closeStore()
}

// Stop stops serving and waits until both servers are down.
func (c *ControlPlane) Stop() {
	c.cancel()
	<-c.done
}

// Done is closed when the control plane has stopped.
func (c *ControlPlane) Done() <-chan struct{} { return c.done }
