//go:build integration

package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/llmcanary/llmcanary/internal/local"
	"github.com/llmcanary/llmcanary/internal/mtls"
	"github.com/llmcanary/llmcanary/internal/procs"
	"github.com/llmcanary/llmcanary/sim"
)

// shortProfile answers a streamed request in a few milliseconds.
func shortProfile(v string) sim.Profile {
	return sim.Profile{Version: v, Model: model, TTFT: sim.Fixed(5), ITL: sim.Fixed(1), OutputTokens: sim.FixedCount(4)}
}

// grpcClient is how a raw client dials a service port: in plaintext, over
// TLS without a client certificate, or with the given client pair.
type grpcClient struct {
	name      string
	plaintext bool
	ca        string // verifies the server
	cert, key string // client certificate; "" = none
	accepted  bool   // what the service must do with it
}

func (c grpcClient) dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	creds := insecure.NewCredentials()
	if !c.plaintext {
		cfg, err := mtls.ClientConfig(c.ca, c.cert, c.key)
		if err != nil {
			t.Fatal(err)
		}
		creds = credentials.NewTLS(cfg)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// intruders are the clients a service must refuse, and the fleet's own
// certificate, which it must accept (without it the refusals prove
// nothing: a port that refuses everyone would pass).
func intruders(t *testing.T, certs mtls.Dir) []grpcClient {
	t.Helper()
	foreign, err := mtls.Generate(mtls.GenerateOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return []grpcClient{
		{name: "plaintext", plaintext: true},
		{name: "TLS without a client certificate", ca: certs.CA()},
		{name: "a client certificate from another CA", ca: certs.CA(), cert: foreign.ClientCert(), key: foreign.ClientKey()},
		{name: "the services' own server certificate", ca: certs.CA(), cert: certs.ServerCert(), key: certs.ServerKey()},
		{name: "the fleet's client certificate", ca: certs.CA(), cert: certs.ClientCert(), key: certs.ClientKey(), accepted: true},
	}
}

// checkRefused fails unless err is the refusal of the connection itself
// (gRPC's Unavailable: the handshake or the first read failed), not an
// answer of the service.
func checkRefused(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		t.Fatal("the service answered")
	}
	if s, _ := status.FromError(err); s.Code() != codes.Unavailable {
		t.Fatalf("refused with %v, want the connection refused (Unavailable)", err)
	}
	t.Logf("refused: %v", err)
}

// A telemetry port anyone can stream to would let anyone push a rollback
// or a promotion with made-up timings; an xDS port anyone can reach would
// let anyone pose as an Envoy (and be counted as applying a change). Both
// accept only the fleet's client certificate.
func TestXDSAndExtProcPortsRefuseClientsWithoutTheFleetsCertificate(t *testing.T) {
	f := startFleet(t, fleetOptions{wasm: true, stableW: 50, stable: shortProfile("v1"), canary: shortProfile("v2"),
		stack: local.Options{Telemetry: true, Measure: timeAll}})
	ctx := context.Background()
	for _, c := range intruders(t, f.Certs) {
		t.Run("xDS/"+c.name, func(t *testing.T) {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			err := func() error {
				s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(c.dial(t, f.CP.XDSAddr)).StreamAggregatedResources(cctx)
				if err != nil {
					return err
				}
				err = s.Send(&discoveryv3.DiscoveryRequest{
					Node:    &corev3.Node{Id: "intruder", Cluster: "llmcanary"},
					TypeUrl: resource.ListenerType,
				})
				if err != nil {
					return err
				}
				r, err := s.Recv()
				if err == nil && len(r.GetResources()) == 0 {
					err = errors.New("the control plane sent no listener")
				}
				return err
			}()
			if c.accepted {
				if err != nil {
					t.Fatalf("the fleet's certificate got no configuration: %v", err)
				}
				return
			}
			checkRefused(t, err)
		})
		t.Run("ext_proc/"+c.name, func(t *testing.T) {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			err := func() error {
				s, err := extprocv3.NewExternalProcessorClient(c.dial(t, f.Telemetry.Addr)).Process(cctx)
				if err != nil {
					return err
				}
				err = s.Send(&extprocv3.ProcessingRequest{
					ObservabilityMode: true,
					Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
						Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: ":path", RawValue: []byte("/v1/chat/completions")}}},
					}},
				})
				if err != nil {
					return err
				}
				if err := s.CloseSend(); err != nil {
					return err
				}
				for {
					if _, err := s.Recv(); err != nil {
						if errors.Is(err, io.EOF) {
							return nil // the service took the stream and ended it
						}
						return err
					}
				}
			}()
			if c.accepted {
				if err != nil {
					t.Fatalf("the fleet's certificate could not stream: %v", err)
				}
				return
			}
			checkRefused(t, err)
		})
	}
	// Only the real Envoy and the accepted raw client ever reached the
	// fleet's view; no refused client did.
	fl, err := f.API.Fleet(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range fl.Nodes {
		if n.ID != "gw-0" && n.ID != "intruder" {
			t.Fatalf("unexpected node in the fleet: %+v", n)
		}
	}
}

// Envoy presents its client certificate from file SDS on both links: it
// gets its configuration (routing follows the weights) and its telemetry
// is recorded, and Envoy's own TLS counters show both links are TLS.
func TestEnvoyWithItsClientCertificateRoutesAndRecordsOverMTLS(t *testing.T) {
	f := startFleet(t, fleetOptions{wasm: true, stableW: 50, stable: shortProfile("v1"), canary: shortProfile("v2"),
		stack: local.Options{Telemetry: true, Measure: timeAll}})
	const n = 200
	served := map[string]int{}
	for i, a := range f.parallel(t, n, func(i int) request { return request{body: streamBody, headers: user(i)} }) {
		if a.status != 200 || !strings.Contains(a.body, "[DONE]") {
			t.Fatalf("request %d: %d %.100s", i, a.status, a.body)
		}
		served[a.servedBy]++
	}
	if served["v1"] == 0 || served["v2"] == 0 {
		t.Fatalf("a 50/50 split served %v", served)
	}
	if got, distinct := f.waitRows(t, n, 20*time.Second); got != n || distinct != n {
		t.Fatalf("%d requests over mTLS gave %d rows (%d distinct ids), want %d", n, got, distinct, n)
	}
	ctx := context.Background()
	e := f.Envoys[0]
	for _, cluster := range []string{"llmcanary_xds", "llmcanary_extproc"} {
		hs, err := e.Stat(ctx, "cluster."+cluster+".ssl.handshake")
		if err != nil || hs == 0 {
			t.Fatalf("Envoy made %d TLS handshakes to %s (%v): the link is not TLS", hs, cluster, err)
		}
		noCert, _ := e.Stat(ctx, "cluster."+cluster+".ssl.fail_verify_no_cert")
		t.Logf("%s: %d TLS handshakes, %d without a peer certificate", cluster, hs, noCert)
	}
}

// Rotation: new files in place (as `llmcanary certs --renew` writes them)
// reach the next connection to each service — xDS, ext_proc and the
// management API — without restarting it, and Envoy loads its new client
// certificate from file SDS, which the telemetry service then accepts.
func TestRotatedCertificatesReachNewConnectionsWithoutARestart(t *testing.T) {
	f := startFleet(t, fleetOptions{wasm: true, stableW: 50, stable: shortProfile("v1"), canary: shortProfile("v2"),
		stack: local.Options{Telemetry: true, Measure: timeAll}})
	ctx := context.Background()
	ports := map[string]string{"xDS": f.CP.XDSAddr, "ext_proc": f.Telemetry.Addr, "management API": f.CP.APIAddr}
	oldServer, oldClient := certSerial(t, f.Certs.ServerCert()), certSerial(t, f.Certs.ClientCert())
	for name, addr := range ports {
		if got := servedSerial(t, f.Certs, addr); got.Cmp(oldServer) != 0 {
			t.Fatalf("%s serves serial %x, not the one in %s", name, got, f.Certs.ServerCert())
		}
	}
	if !envoyHasCert(t, f, oldClient) {
		t.Fatal("Envoy's /certs does not list the client certificate it was started with")
	}
	if _, err := mtls.Generate(mtls.GenerateOptions{Dir: string(f.Certs), Renew: true}); err != nil {
		t.Fatal(err)
	}
	newServer, newClient := certSerial(t, f.Certs.ServerCert()), certSerial(t, f.Certs.ClientCert())
	if newServer.Cmp(oldServer) == 0 || newClient.Cmp(oldClient) == 0 {
		t.Fatal("renew issued no new certificates")
	}
	for name, addr := range ports {
		if got := servedSerial(t, f.Certs, addr); got.Cmp(newServer) != 0 {
			t.Fatalf("after the rotation %s still serves serial %x, want %x", name, got, newServer)
		}
	}
	waitFor(t, 10*time.Second, "Envoy loading its rotated client certificate", func() bool { return envoyHasCert(t, f, newClient) })
	// Envoy's next connection to the telemetry uses the new certificate:
	// cut the current one (the service stops and serves again, its
	// identity untouched) and the requests after it are still recorded.
	before, _ := f.Envoys[0].Stat(ctx, "cluster.llmcanary_extproc.ssl.handshake")
	f.Telemetry.Kill()
	if err := f.Telemetry.Restart(); err != nil {
		t.Fatal(err)
	}
	const n = 50
	for i, a := range f.parallel(t, n, func(i int) request { return request{body: streamBody, headers: user(i)} }) {
		if a.status != 200 {
			t.Fatalf("request %d after the rotation: %d %.100s", i, a.status, a.body)
		}
	}
	waitFor(t, 20*time.Second, "rows of the requests after the rotation", func() bool { n2, _ := f.rows(t); return n2 >= n })
	after, _ := f.Envoys[0].Stat(ctx, "cluster.llmcanary_extproc.ssl.handshake")
	if after <= before {
		t.Fatalf("Envoy made no new TLS handshake to the telemetry (%d before, %d after)", before, after)
	}
}

// The management API serves TLS with the stack's certificate and keeps
// its bearer token: plaintext gets no answer from the API, and TLS without
// the token gets 401.
func TestManagementAPIServesTLSAndStillWantsItsToken(t *testing.T) {
	f := startFleet(t, fleetOptions{stableW: 100})
	ctx := context.Background()
	hc, err := mtls.HTTPClient(f.Certs.CA())
	if err != nil {
		t.Fatal(err)
	}
	get := func(c *http.Client, url, token string) (int, string, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := c.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	if !strings.HasPrefix(f.CP.APIURL, "https://") {
		t.Fatalf("the API's URL is %s", f.CP.APIURL)
	}
	if code, body, err := get(http.DefaultClient, "http://"+f.CP.APIAddr+"/v1/state", f.API.Token); err == nil && code == 200 {
		t.Fatalf("plaintext got the state: %d %.100s", code, body)
	}
	if code, _, err := get(hc, f.CP.APIURL+"/v1/state", ""); err != nil || code != 401 {
		t.Fatalf("TLS without a token: %d %v, want 401", code, err)
	}
	if code, body, err := get(hc, f.CP.APIURL+"/v1/state", f.API.Token); err != nil || code != 200 || !strings.Contains(body, model) {
		t.Fatalf("TLS with the token: %d %v %.100s", code, err, body)
	}
	if _, _, err := get(http.DefaultClient, f.CP.APIURL+"/v1/state", f.API.Token); err == nil {
		t.Fatal("a client that does not trust the stack's CA accepted the API's certificate")
	}
}

// servedSerial opens a new TLS connection to addr with the fleet's client
// certificate and returns the serial of the certificate the server shows.
func servedSerial(t *testing.T, certs mtls.Dir, addr string) *big.Int {
	t.Helper()
	cfg, err := mtls.ClientConfig(certs.CA(), certs.ClientCert(), certs.ClientKey())
	if err != nil {
		t.Fatal(err)
	}
	cfg.NextProtos = []string{"h2"}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatalf("TLS to %s: %v", addr, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber
}

func certSerial(t *testing.T, path string) *big.Int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s holds no PEM block", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber
}

// envoyHasCert reports whether Envoy's admin /certs lists a certificate
// with the given serial (Envoy shows the certificates it has loaded).
func envoyHasCert(t *testing.T, f *fleet, serial *big.Int) bool {
	t.Helper()
	body, err := f.Envoys[0].Admin(context.Background(), "/certs")
	if err != nil {
		t.Fatal(err)
	}
	var certs struct {
		Certificates []struct {
			CertChain []struct {
				SerialNumber string `json:"serial_number"`
			} `json:"cert_chain"`
		} `json:"certificates"`
	}
	if err := json.Unmarshal([]byte(body), &certs); err != nil {
		t.Fatalf("envoy /certs: %v\n%s", err, body)
	}
	for _, c := range certs.Certificates {
		for _, cc := range c.CertChain {
			if s, ok := new(big.Int).SetString(cc.SerialNumber, 16); ok && s.Cmp(serial) == 0 {
				return true
			}
		}
	}
	return false
}

// Envoy's client certificate is signed by the fleet's CA, so whoever holds
// one could serve Envoy a configuration of their own if Envoy took any
// certificate of that CA from its control plane. It does not: the client
// certificate is for client authentication only, and Envoy refuses it from
// a server ("unsupported certificate purpose"). A server with the services'
// certificate, the control, is accepted by the same Envoy setup.
func TestEnvoyRefusesAControlPlanePresentingTheFleetsClientCertificate(t *testing.T) {
	certs, err := mtls.Generate(mtls.GenerateOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		cert, key string
		accepted  bool
	}{
		{"the fleet's client certificate", certs.ClientCert(), certs.ClientKey(), false},
		{"the services' certificate", certs.ServerCert(), certs.ServerKey(), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pair, err := tls.LoadX509KeyPair(tc.cert, tc.key)
			if err != nil {
				t.Fatal(err)
			}
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			// An xDS server that holds every stream open: a connected Envoy
			// shows control_plane.connected_state 1.
			srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12})))
			discoveryv3.RegisterAggregatedDiscoveryServiceServer(srv, holdingADS{})
			go srv.Serve(lis)
			t.Cleanup(srv.Stop)
			e, err := procs.StartEnvoy(ctx, procs.EnvoyOptions{Dir: t.TempDir(), NodeID: "gw-purpose", XDS: lis.Addr().String(), TLSDir: string(certs), AdminOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(e.Stop)
			var connected, failed int64
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				connected, _ = e.Stat(ctx, "control_plane.connected_state")
				failed, _ = e.Stat(ctx, "cluster.llmcanary_xds.ssl.fail_verify_error")
				if connected == 1 || failed > 0 {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			t.Logf("connected_state %d, fail_verify_error %d", connected, failed)
			if tc.accepted && (connected != 1 || failed != 0) {
				t.Fatalf("Envoy did not take the services' certificate: connected %d, verification failures %d", connected, failed)
			}
			if !tc.accepted && (connected != 0 || failed == 0) {
				t.Fatalf("Envoy took its own client certificate from a control plane: connected %d, verification failures %d", connected, failed)
			}
		})
	}
}

// holdingADS answers no request and keeps each stream open until the
// client goes.
type holdingADS struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
}

func (holdingADS) StreamAggregatedResources(s discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	<-s.Context().Done()
	return nil
}
