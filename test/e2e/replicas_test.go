//go:build integration

package e2e

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/envoy"
	"github.com/llmcanary/llmcanary/internal/etcdtest"
	"github.com/llmcanary/llmcanary/internal/local"
	"github.com/llmcanary/llmcanary/internal/mtls"
	"github.com/llmcanary/llmcanary/internal/procs"
	"github.com/llmcanary/llmcanary/sim"
	"github.com/llmcanary/llmcanary/xds"
)

// Two control plane replicas (`llmcanary control` processes, xDS over
// mTLS) share their state through a real etcd; two real Envoys each list
// both, in opposite orders. A change through the replica an Envoy does not
// stream from reaches it; when the replica it streams from is killed
// mid-rollout, it moves to the other while the traffic through both
// gateways never fails, and a later change reaches both.
func TestControlPlaneReplicasOnEtcdServeEveryEnvoyAndSurviveTheLossOfOne(t *testing.T) {
	if _, err := procs.EnvoyBinary(); err != nil {
		t.Fatalf("end-to-end tests need a real Envoy: %v", err)
	}
	ctx := context.Background()
	dir := t.TempDir()
	etcd := etcdtest.Start(t)
	stable, err := local.StartSim(sim.Profile{Version: "v1", Model: model, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stable.Stop)
	canary, err := local.StartSim(sim.Profile{Version: "v2", Model: model, Seed: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(canary.Stop)
	ports, err := procs.FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	// As in production: xDS over mTLS (the health checks too), the API
	// over TLS.
	certs, err := mtls.Generate(mtls.GenerateOptions{Dir: filepath.Join(dir, "tls")})
	if err != nil {
		t.Fatal(err)
	}
	apiHTTP, err := mtls.HTTPClient(certs.CA())
	if err != nil {
		t.Fatal(err)
	}
	etcdArgs := []string{"--etcd-endpoints", strings.Join(etcd.Endpoints, ","), "--etcd-prefix", "/e2e/"}
	replica := func(name string) *procs.Control {
		c, err := procs.StartControl(ctx, procs.ControlOptions{Name: name, Dir: dir, Token: local.DevToken, ListenerPort: ports[0],
			TLS: certs.ServerFiles(), Args: etcdArgs})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("control %s log tail:\n%s", name, c.Proc.Tail(30))
			}
			c.Proc.Stop(5 * time.Second)
		})
		return c
	}
	a, b := replica("a"), replica("b")
	apiA := &xds.Client{BaseURL: a.APIURL, Token: local.DevToken, Actor: "e2e", HTTP: apiHTTP}
	apiB := &xds.Client{BaseURL: b.APIURL, Token: local.DevToken, Actor: "e2e", HTTP: apiHTTP}
	if _, err := apiA.PutModel(ctx, &xds.Model{
		Name: model, Stable: "v1",
		Versions: []xds.Version{{Name: "v1", Endpoints: []string{stable.Addr}}, {Name: "v2", Endpoints: []string{canary.Addr}}},
		Weights:  map[string]float64{"v1": 100, "v2": 0},
	}); err != nil {
		t.Fatal(err)
	}

	// gw-0 prefers A, gw-1 prefers B; gw-1 binds its own listener port and
	// takes delta xDS.
	var envoys []*procs.Envoy
	gateways := []string{"127.0.0.1:" + strconv.Itoa(ports[0]), "127.0.0.1:" + strconv.Itoa(ports[1])}
	for i, xdsList := range []string{a.XDS + "," + b.XDS, b.XDS + "," + a.XDS} {
		eo := procs.EnvoyOptions{Dir: filepath.Join(dir, "envoy"), NodeID: fmt.Sprintf("gw-%d", i), XDS: xdsList, TLSDir: string(certs)}
		if i == 1 {
			eo.ListenerPort, eo.Delta = ports[1], true
		}
		e, err := procs.StartEnvoy(ctx, eo)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("%s log tail:\n%s", e.Proc.Name, e.Proc.Tail(20))
			}
			e.Stop()
		})
		envoys = append(envoys, e)
	}
	hosts := map[string][]string{xds.ClusterName(model, "v1"): {stable.Addr}, xds.ClusterName(model, "v2"): {canary.Addr}}
	waitBoth := func(rev uint64) {
		t.Helper()
		for i, e := range envoys {
			if err := e.WaitReady(ctx, gateways[i], rev, hosts); err != nil {
				t.Fatal(err)
			}
		}
	}
	f := &fleet{Local: &local.Local{Gateway: gateways}, client: &http.Client{Timeout: 30 * time.Second}}
	served := func(gw int, pos uint64) string {
		t.Helper()
		return f.do(t, request{gateway: gw, bucket: bucketFor(pos, 3)}).version
	}
	nodesOn := func(api *xds.Client) []string {
		fl, err := api.Fleet(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, n := range fl.Nodes {
			ids = append(ids, n.ID)
		}
		return ids
	}

	waitBoth(1)
	// Each Envoy prefers its first replica, but over mTLS its first health
	// checks fail (Envoy loads the SDS certificates just after starting
	// them), so a stream goes to the replica whose check passes first and
	// stays there while that replica lives. The test follows gw-0: X is
	// the replica it streams from, Y the other.
	replicas, apis, names := []*procs.Control{a, b}, []*xds.Client{apiA, apiB}, []string{"A", "B"}
	streamsFrom := func(node string) int {
		t.Helper()
		for i, api := range apis {
			if slices.Contains(nodesOn(api), node) {
				return i
			}
		}
		t.Fatalf("no replica serves %s", node)
		return -1
	}
	x := streamsFrom("gw-0")
	y := 1 - x
	t.Logf("gw-0 (prefers A) streams from %s, gw-1 (prefers B) from %s", names[x], names[streamsFrom("gw-1")])

	// A change through Y is served by gw-0, which streams from X.
	rev := setWeights(t, apis[y], 50)
	waitBoth(rev)
	for gw := range envoys {
		if v := served(gw, 7500); v != "v2" {
			t.Fatalf("after the change through %s, gateway %d sends position 7500 to %q, want v2", names[y], gw, v)
		}
	}

	// Traffic through both gateways from here on; none may fail.
	var sent, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for gw := range envoys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := uint64(0); ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				a, err := f.try(request{gateway: gw, bucket: bucketFor(i*37%10000, 5)})
				sent.Add(1)
				if err == nil && a.status != 200 {
					err = fmt.Errorf("gateway %d: %d %s", gw, a.status, a.body)
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	stopTraffic := func() {
		close(stop)
		wg.Wait()
	}
	defer func() {
		select {
		case <-stop:
		default:
			stopTraffic()
		}
	}()

	// Kill X mid-rollout: gw-0 moves to Y.
	killed := time.Now()
	replicas[x].Proc.Kill()
	for !slices.Contains(nodesOn(apis[y]), "gw-0") {
		if time.Since(killed) > 30*time.Second {
			t.Fatalf("30 s after replica %s was killed, gw-0 does not stream from %s", names[x], names[y])
		}
		time.Sleep(20 * time.Millisecond)
	}
	moved := time.Since(killed)
	// The bound: A's health check fails within an interval plus its
	// timeout, the stream's retry comes within the backoff cap, and a
	// second for connecting on a busy machine.
	if bound := envoy.XDSHealthInterval + time.Second + envoy.XDSRetryMaxInterval + time.Second; moved > bound {
		t.Fatalf("gw-0 streamed from replica %s %v after %s was killed; the bootstrap bounds it by %v", names[y], moved, names[x], bound)
	}

	// A later change by a client that lists both replicas, the dead one
	// first, goes through Y and reaches both Envoys.
	both := &xds.Client{BaseURL: replicas[x].APIURL + "," + replicas[y].APIURL, Token: local.DevToken, Actor: "e2e", HTTP: apiHTTP}
	rev = setWeights(t, both, 80)
	waitBoth(rev)
	for gw := range envoys {
		if v := served(gw, 3000); v != "v2" {
			t.Fatalf("after the change through %s, gateway %d sends position 3000 to %q, want v2", names[y], gw, v)
		}
	}
	stopTraffic()
	t.Logf("gw-0 streamed from replica %s %v after %s was killed; %d requests through both gateways, %d failed",
		names[y], moved.Round(time.Millisecond), names[x], sent.Load(), failed.Load())
	if failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed while replica %s died; first: %v", failed.Load(), sent.Load(), names[x], firstErr.Load())
	}
	if sent.Load() < 50 {
		t.Fatalf("only %d requests were sent across the failover", sent.Load())
	}
}

// setWeights gives the canary v2 the weight w through api and returns the
// revision of the change.
func setWeights(t *testing.T, api *xds.Client, w float64) uint64 {
	t.Helper()
	ctx := context.Background()
	if _, err := api.SetWeights(ctx, model, map[string]float64{"v1": 100 - w, "v2": w}, ""); err != nil {
		t.Fatal(err)
	}
	rev, err := api.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return rev
}
