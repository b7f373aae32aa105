package xds

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/llmcanary/llmcanary/internal/config"
	"github.com/llmcanary/llmcanary/internal/etcdtest"
	"github.com/llmcanary/llmcanary/internal/procs"
)

// startReplica starts a control plane on loopback whose state lives in
// etcd under prefix (etcd nil: the file store in a temporary directory).
func startReplica(tb testing.TB, srv *etcdtest.Server, prefix string) *ControlPlane {
	tb.Helper()
	o := DefaultOptions()
	o.XDSListen, o.APIListen, o.Token, o.Logger = "127.0.0.1:0", "127.0.0.1:0", testToken, quiet
	if srv != nil {
		o.Etcd.Endpoints, o.Etcd.Prefix = srv.Endpoints, prefix
	} else {
		o.DataDir = tb.TempDir()
	}
	cp, err := Start(context.Background(), o)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(cp.Stop)
	return cp
}

func llama(tb testing.TB) *Model {
	tb.Helper()
	var m Model
	if err := json.Unmarshal([]byte(llamaModel), &m); err != nil {
		tb.Fatal(err)
	}
	m.Name = "llama"
	return &m
}

// routeWatcher is an ADS client on a real gRPC connection standing in for
// an Envoy: it asks for the routes, ACKs every response and reports when
// each revision arrived.
type routeWatcher struct {
	mu      sync.Mutex
	arrived map[uint64]time.Time
	changed chan struct{}
}

func watchRoutes(tb testing.TB, addr, node string) *routeWatcher {
	tb.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(func() { cancel(); conn.Close() })
	s, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	n := &corev3.Node{Id: node, Cluster: "gateways"}
	req := &discoverygrpc.DiscoveryRequest{Node: n, TypeUrl: resource.RouteType, ResourceNames: []string{RouteConfigName}}
	if err := s.Send(req); err != nil {
		tb.Fatal(err)
	}
	w := &routeWatcher{arrived: map[uint64]time.Time{}, changed: make(chan struct{}, 1)}
	go func() {
		for {
			resp, err := s.Recv()
			if err != nil {
				return
			}
			now := time.Now()
			rev, _, _ := strings.Cut(resp.GetVersionInfo(), ".")
			if r, err := strconv.ParseUint(rev, 10, 64); err == nil {
				w.mu.Lock()
				w.arrived[r] = now
				w.mu.Unlock()
				select {
				case w.changed <- struct{}{}:
				default:
				}
			}
			ack := &discoverygrpc.DiscoveryRequest{TypeUrl: resource.RouteType, ResourceNames: []string{RouteConfigName},
				VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}
			if s.Send(ack) != nil {
				return
			}
		}
	}()
	return w
}

// await returns when revision rev arrived, failing after timeout.
func (w *routeWatcher) await(tb testing.TB, rev uint64, timeout time.Duration) time.Time {
	tb.Helper()
	deadline := time.After(timeout)
	for {
		w.mu.Lock()
		at, ok := w.arrived[rev]
		w.mu.Unlock()
		if ok {
			return at
		}
		select {
		case <-w.changed:
		case <-deadline:
			tb.Fatalf("routes of revision %d never arrived", rev)
		}
	}
}

func TestReplicaServesAChangeMadeThroughAnotherReplica(t *testing.T) {
	srv := etcdtest.Start(t)
	a, b := startReplica(t, srv, "/fleet/"), startReplica(t, srv, "/fleet/")
	ctx := context.Background()
	apiA := &Client{BaseURL: a.APIURL, Token: testToken}
	apiB := &Client{BaseURL: b.APIURL, Token: testToken}
	onB := watchRoutes(t, b.XDSAddr, "gw-b")
	if _, err := apiA.PutModel(ctx, llama(t)); err != nil {
		t.Fatal(err)
	}
	onB.await(t, 1, 10*time.Second)
	if _, err := apiA.SetWeights(ctx, "llama", map[string]float64{"v1": 90, "v2": 10}, ""); err != nil {
		t.Fatal(err)
	}
	onB.await(t, 2, 10*time.Second)
	m, err := apiB.Model(ctx, "llama")
	if err != nil || m.Weights["v2"] != 10 {
		t.Fatalf("replica B serves %+v (%v), want v2=10", m, err)
	}
	// B's readiness holds: its published revision is the state's.
	if b.Publisher.Published() != 2 || b.Store.State().Revision != 2 {
		t.Fatalf("replica B published %d with state %d, want 2", b.Publisher.Published(), b.Store.State().Revision)
	}
	// A change through B with the ETag read from A goes through; the
	// same ETag again is stale.
	st, err := apiA.State(ctx)
	if err != nil {
		t.Fatal(err)
	}
	etag := `"` + strconv.FormatUint(st.Revision, 10) + `"`
	for i, want := range []int{http.StatusOK, http.StatusPreconditionFailed} {
		if code, body := callURL(t, "PUT", b.APIURL+"/v1/models/llama/weights", testToken, `{"weights":{"v1":80,"v2":20}}`, "If-Match", etag); code != want {
			t.Fatalf("change %d through B with If-Match %s: %d %s, want %d", i, etag, code, body, want)
		}
	}
	code, body := callURL(t, "GET", a.APIURL+"/v1/changes", testToken, "")
	var cs struct{ Changes []Change }
	if code != http.StatusOK || json.Unmarshal([]byte(body), &cs) != nil || len(cs.Changes) != 3 {
		t.Fatalf("audit trail through A: %d %s, want 3 changes", code, body)
	}
}

// BenchmarkXDSPropagationReplicas measures how long a weight change takes
// from the management API call to 100 ADS clients (in process, on real
// gRPC) holding the new routes: with the file store (clients on the
// replica that took the call) and with etcd (the call to replica A, the
// clients on replica B), and the ratio of the two p99s. make bench runs
// it.
func BenchmarkXDSPropagationReplicas(b *testing.B) {
	const clients, changes = 100, 30
	var fileP99 time.Duration // the baseline, measured in the same run
	for _, store := range []string{"file", "etcd"} {
		b.Run(store, func(b *testing.B) {
			var api, served *ControlPlane
			if store == "file" {
				api = startReplica(b, nil, "")
				served = api
			} else {
				srv := etcdtest.Start(b)
				api, served = startReplica(b, srv, "/bench/"), startReplica(b, srv, "/bench/")
			}
			ctx := context.Background()
			c := &Client{BaseURL: api.APIURL, Token: testToken}
			if _, err := c.PutModel(ctx, llama(b)); err != nil {
				b.Fatal(err)
			}
			ws := make([]*routeWatcher, clients)
			for i := range ws {
				ws[i] = watchRoutes(b, served.XDSAddr, fmt.Sprintf("gw-%d", i))
			}
			for _, w := range ws {
				w.await(b, 1, 30*time.Second)
			}
			var lat []time.Duration
			b.ResetTimer()
			for range b.N {
				lat = lat[:0]
				for i := range changes {
					w := float64(1 + i%50)
					t0 := time.Now()
					if _, err := c.SetWeights(ctx, "llama", map[string]float64{"v1": 100 - w, "v2": w}, ""); err != nil {
						b.Fatal(err)
					}
					rev, err := c.Revision(ctx)
					if err != nil {
						b.Fatal(err)
					}
					for _, w := range ws {
						lat = append(lat, w.await(b, rev, 30*time.Second).Sub(t0))
					}
				}
			}
			b.StopTimer()
			slices.Sort(lat)
			q := func(p float64) time.Duration { return lat[int(p*float64(len(lat)-1))] }
			b.ReportMetric(float64(q(0.5).Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(q(0.99).Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
			if store == "file" {
				fileP99 = q(0.99)
			} else if fileP99 > 0 {
				b.ReportMetric(float64(q(0.99))/float64(fileP99), "p99/file")
			}
		})
	}
}

func TestReplicaStartingWithEtcdUnreachableFailsWithAClearError(t *testing.T) {
	ports, err := procs.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	o := DefaultOptions()
	o.XDSListen, o.APIListen, o.Token, o.Logger = "127.0.0.1:0", "127.0.0.1:0", testToken, quiet
	o.Etcd.Endpoints = []string{fmt.Sprintf("http://127.0.0.1:%d", ports[0])}
	o.Etcd.DialTimeout = config.Duration(500 * time.Millisecond)
	cp, err := Start(context.Background(), o)
	if err == nil {
		cp.Stop()
		t.Fatal("a replica started without its state")
	}
	if !strings.Contains(err.Error(), "unreachable") || !strings.Contains(err.Error(), o.Etcd.Endpoints[0]) {
		t.Fatalf("start with etcd down: %v; want the endpoint named as unreachable", err)
	}
}
