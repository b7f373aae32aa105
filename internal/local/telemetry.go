package local

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/extproc/chwriter"
	"github.com/llmcanary/llmcanary/internal/mtls"
)

// TelemetryOptions describe an in-process ext_proc service writing to
// ClickHouse, as `llmcanary extproc` runs it.
type TelemetryOptions struct {
	ClickHouse string // native address
	Database   string // default wire.Database
	SpoolDir   string
	Capture    extproc.CaptureOptions
	Log        *slog.Logger
	// TLS, when set, serves gRPC over TLS and, with a client CA, accepts
	// only clients (Envoys) with a certificate from it.
	TLS mtls.ServerFiles
}

// Telemetry is a running ext_proc service.
type Telemetry struct {
	Addr        string // gRPC address for Envoy
	MetricsAddr string // Prometheus /metrics
	Writer      *chwriter.Writer
	Registry    *prometheus.Registry

	o       TelemetryOptions
	certs   *mtls.Reloader
	grpc    *grpc.Server
	metrics *http.Server
}

// StartTelemetry starts the ext_proc service on a free loopback port.
func StartTelemetry(ctx context.Context, o TelemetryOptions) (*Telemetry, error) {
	t := &Telemetry{o: o}
	reg := prometheus.NewRegistry()
	w, err := chwriter.New(ctx, chwriter.Options{
		Addr: o.ClickHouse, Database: o.Database, SpoolDir: o.SpoolDir,
		FlushInterval: 200 * time.Millisecond, Registerer: reg, Logger: o.Log,
	})
	if err != nil {
		return nil, err
	}
	t.Writer, t.Registry = w, reg
	if o.TLS.Enabled() {
		if t.certs, err = mtls.NewReloader(o.TLS, o.Log); err != nil {
			w.Close(context.Background())
			return nil, err
		}
	}
	if err := t.serve("127.0.0.1:0"); err != nil {
		w.Close(context.Background())
		return nil, err
	}
	return t, nil
}

func (t *Telemetry) serve(addr string) error {
	srv, err := extproc.NewServer(extproc.Options{Sink: t.Writer, Registerer: prometheusOnce(t), Capture: t.o.Capture, Logger: t.o.Log})
	if err != nil {
		return err
	}
	var l net.Listener
	for i := 0; i < 50; i++ { // a restarted service takes its old port back
		if l, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("extproc listen: %w", err)
	}
	var gopts []grpc.ServerOption
	if t.certs != nil {
		gopts = append(gopts, grpc.Creds(credentials.NewTLS(t.certs.Config([]string{"h2"}, true))))
	}
	t.grpc = grpc.NewServer(append(gopts, extproc.ServerOptions()...)...)
	srv.Register(t.grpc)
	go t.grpc.Serve(l)
	t.Addr = l.Addr().String()
	if t.metrics == nil {
		ml, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(t.Registry, promhttp.HandlerOpts{}))
		t.metrics = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go t.metrics.Serve(ml)
		t.MetricsAddr = ml.Addr().String()
	}
	return nil
}

// prometheusOnce registers the service's metrics only the first time, so a
// restarted service keeps counting on the same registry.
func prometheusOnce(t *Telemetry) prometheus.Registerer {
	if t.grpc == nil {
		return t.Registry
	}
	return nil
}

// Kill stops the gRPC service at once, as a crash would; the ClickHouse
// writer keeps what it already has.
func (t *Telemetry) Kill() { t.grpc.Stop() }

// Restart serves again on the same address after Kill.
func (t *Telemetry) Restart() error { return t.serve(t.Addr) }

// Stop ends the service and flushes the writer.
func (t *Telemetry) Stop() {
	t.grpc.Stop()
	if t.metrics != nil {
		t.metrics.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t.Writer.Close(ctx)
}
