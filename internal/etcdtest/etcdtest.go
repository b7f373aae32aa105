// Package etcdtest starts a real, single-member etcd server inside the test
// process (go.etcd.io/etcd/server/v3/embed) on free loopback ports with its
// own data directory. Tests of the control plane's and the analyzer's etcd
// stores use it instead of a fake: the compare-and-swap, watch, lease and
// election semantics they rely on are etcd's own.
package etcdtest

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/llmcanary/llmcanary/internal/procs"
)

// startTimeout bounds how long Start waits for the member to be ready; a
// loaded two-core machine can need several seconds.
const startTimeout = 30 * time.Second

// Server is a running embedded etcd member.
type Server struct {
	// Endpoints are the client URLs ("http://127.0.0.1:port").
	Endpoints []string
	// Client is connected to the member and closed with it.
	Client *clientv3.Client

	etcd *embed.Etcd
	cfg  *embed.Config
}

// Start runs a member in a temporary directory and stops it when the test
// ends. It fails the test if the member does not become ready.
func Start(tb testing.TB) *Server {
	tb.Helper()
	ports, err := procs.FreePorts(2)
	if err != nil {
		tb.Fatalf("etcd: %v", err)
	}
	client := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[0])}
	peer := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[1])}

	cfg := embed.NewConfig()
	cfg.Name = "test"
	cfg.Dir = tb.TempDir()
	cfg.ListenClientUrls = []url.URL{client}
	cfg.AdvertiseClientUrls = []url.URL{client}
	cfg.ListenPeerUrls = []url.URL{peer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())

	s := &Server{Endpoints: []string{client.String()}, cfg: cfg}
	s.start(tb)
	s.Client, err = clientv3.New(clientv3.Config{Endpoints: s.Endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		s.Stop()
		tb.Fatalf("etcd: client: %v", err)
	}
	tb.Cleanup(func() {
		s.Client.Close()
		s.Stop()
	})
	return s
}

func (s *Server) start(tb testing.TB) {
	tb.Helper()
	e, err := embed.StartEtcd(s.cfg)
	if err != nil {
		tb.Fatalf("etcd: start: %v", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		tb.Fatalf("etcd: %v", err)
	case <-time.After(startTimeout):
		e.Close()
		tb.Fatalf("etcd: not ready after %s", startTimeout)
	}
	s.etcd = e
}

// Stop stops the member, as an outage would; clients stay open and
// reconnect once Restart brings it back.
func (s *Server) Stop() {
	if s.etcd != nil {
		s.etcd.Close()
		s.etcd = nil
	}
}

// Restart starts the stopped member again on the same ports and data.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	if s.etcd != nil {
		tb.Fatal("etcd: restart of a running member")
	}
	s.start(tb)
}

// Put writes key=value, failing the test on error.
func (s *Server) Put(tb testing.TB, key, value string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.Client.Put(ctx, key, value); err != nil {
		tb.Fatalf("etcd: put %s: %v", key, err)
	}
}
