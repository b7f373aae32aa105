package xds

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/llmcanary/llmcanary/internal/health"
)

// adsClient is an xDS client on a real gRPC connection, standing in for
// an Envoy: it asks for routes and ACKs or NACKs what it gets.
type adsClient struct {
	stream discoverygrpc.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node   *corev3.Node
}

func dialADS(t *testing.T, addr, node string) *adsClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return &adsClient{stream: s, node: &corev3.Node{Id: node, Cluster: "gateways"}}
}

// routes asks for the route configuration, acking (or nacking) the
// previous response, and returns the next response.
func (c *adsClient) routes(t *testing.T, prev *discoverygrpc.DiscoveryResponse, nack bool) *discoverygrpc.DiscoveryResponse {
	t.Helper()
	req := &discoverygrpc.DiscoveryRequest{Node: c.node, TypeUrl: resource.RouteType, ResourceNames: []string{RouteConfigName}}
	if prev != nil {
		req.ResponseNonce, req.VersionInfo = prev.GetNonce(), prev.GetVersionInfo()
		if nack {
			req.ErrorDetail = &status.Status{Message: "rejected for the test"}
		}
	}
	if err := c.stream.Send(req); err != nil {
		t.Fatal(err)
	}
	if prev != nil {
		return nil
	}
	resp, err := c.stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func (c *adsClient) recv(t *testing.T) *discoverygrpc.DiscoveryResponse {
	t.Helper()
	resp, err := c.stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func scrape(t *testing.T, url string) health.Samples {
	t.Helper()
	ss, err := health.Scrape(context.Background(), nil, url)
	if err != nil {
		t.Fatal(err)
	}
	return ss
}

func value(t *testing.T, ss health.Samples, name string, labels ...string) float64 {
	t.Helper()
	v, ok := ss.Sum(name, labels...)
	if !ok {
		t.Fatalf("%s %v not exported", name, labels)
	}
	return v
}

func TestControlPlaneExportsFleetAndAPIMetricsAndIsReadyOnceItsStateIsPublished(t *testing.T) {
	o := DefaultOptions()
	o.XDSListen, o.APIListen, o.DataDir, o.Token = "127.0.0.1:0", "127.0.0.1:0", t.TempDir(), testToken
	o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cp, err := Start(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Stop()
	ctx := context.Background()
	api := &Client{BaseURL: cp.APIURL, Token: testToken}
	var m Model
	if err := json.Unmarshal([]byte(llamaModel), &m); err != nil {
		t.Fatal(err)
	}
	m.Name = "llama"
	if _, err := api.PutModel(ctx, &m); err != nil {
		t.Fatal(err)
	}
	if _, err := api.Model(ctx, "nope"); err == nil {
		t.Fatal("unknown model found")
	}

	// gw-0 ACKs the routes it gets; gw-1 NACKs them.
	gw0, gw1 := dialADS(t, cp.XDSAddr, "gw-0"), dialADS(t, cp.XDSAddr, "gw-1")
	r0, r1 := gw0.routes(t, nil, false), gw1.routes(t, nil, false)
	gw0.routes(t, r0, false)
	gw1.routes(t, r1, true)
	waitFleet(t, cp, func(ns []NodeStatus) bool { return len(ns) == 2 && ns[0].RouteRevision == cp.Store.State().Revision })

	ss := scrape(t, cp.APIURL+"/metrics")
	rev := float64(cp.Store.State().Revision)
	routeType := "envoy.config.route.v3.RouteConfiguration"
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"llmcanary_control_envoys_connected", nil, 2},
		{"llmcanary_control_state_revision", nil, rev},
		{"llmcanary_control_published_revision", nil, rev},
		{"llmcanary_control_xds_acks_total", []string{"type", routeType}, 1},
		{"llmcanary_control_xds_nacks_total", []string{"type", routeType}, 1},
		{"llmcanary_control_envoy_revision_lag", []string{"node", "gw-0", "cluster", "gateways"}, 0},
		{"llmcanary_control_envoy_revision_lag", []string{"node", "gw-1"}, rev},
		{"llmcanary_control_api_requests_total", []string{"route", "PUT /v1/models/{model}", "method", "PUT", "code", "200"}, 1},
		{"llmcanary_control_api_requests_total", []string{"route", "GET /v1/models/{model}", "code", "404"}, 1},
	} {
		if got := value(t, ss, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if _, ok := ss.Sum("go_goroutines"); !ok {
		t.Error("the Go runtime's metrics are missing")
	}
	lintClean(t, cp.APIURL+"/metrics")

	// A weight change gw-0 has not yet accepted shows as lag 1.
	if _, err := api.SetWeights(ctx, "llama", map[string]float64{"v1": 90, "v2": 10}, ""); err != nil {
		t.Fatal(err)
	}
	gw0.recv(t)
	if got := value(t, scrape(t, cp.APIURL+"/metrics"), "llmcanary_control_envoy_revision_lag", "node", "gw-0"); got != 1 {
		t.Errorf("lag of an Envoy one change behind = %v, want 1", got)
	}

	resp, err := http.Get(cp.APIURL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"state_published": "ok"`) {
		t.Fatalf("readyz %d %s", resp.StatusCode, b)
	}
}

func TestControlPlaneIsNotReadyWhileASavedStateIsUnpublished(t *testing.T) {
	st, err := OpenStateStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pub := NewPublisher(DefaultGateway(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	check := readyCheck(st, pub)
	if err := check.Fn(context.Background()); err != nil {
		t.Fatalf("empty state, nothing to publish: %v", err)
	}
	var m Model
	if err := json.Unmarshal([]byte(llamaModel), &m); err != nil {
		t.Fatal(err)
	}
	m.Name = "llama"
	// Saved without publishing (what a failed publish leaves).
	if _, err := st.Update(0, "test", "put", func(s *State) error { s.Models["llama"] = &m; return nil }, nil); err != nil {
		t.Fatal(err)
	}
	if err := check.Fn(context.Background()); err == nil || !strings.Contains(err.Error(), "saved but") {
		t.Fatalf("unpublished revision: %v", err)
	}
	if err := pub.Publish(st.State()); err != nil {
		t.Fatal(err)
	}
	if err := check.Fn(context.Background()); err != nil {
		t.Fatalf("after publishing: %v", err)
	}
}

func waitFleet(t *testing.T, cp *ControlPlane, ok func([]NodeStatus) bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for !ok(cp.Publisher.Fleet().Nodes()) {
		select {
		case <-deadline:
			t.Fatalf("fleet %+v", cp.Publisher.Fleet().Nodes())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// lintClean fails the test for every problem Prometheus's linter finds in
// the page's metric names.
func lintClean(t *testing.T, url string) {
	t.Helper()
	problems, err := health.Lint(context.Background(), nil, url)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s", p)
	}
}
