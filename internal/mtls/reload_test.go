package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// serve accepts TLS connections with cfg on loopback; each one that
// completes its handshake gets one byte, so a client sees a refusal (which
// TLS 1.3 reports after the client's side of the handshake) on its read.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if c.(*tls.Conn).Handshake() == nil {
					c.Write([]byte("k"))
				}
			}()
		}
	}()
	return l.Addr().String()
}

// dial connects with cfg and returns the server's leaf certificate, or
// the error of the handshake or of the first read.
func dial(addr string, cfg *tls.Config) (*x509.Certificate, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		return nil, err
	}
	return c.ConnectionState().PeerCertificates[0], nil
}

func fileSerial(t *testing.T, path string) *big.Int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := parseCert(b)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func clientOf(t *testing.T, d Dir, withCert bool) *tls.Config {
	t.Helper()
	cert, key := "", ""
	if withCert {
		cert, key = d.ClientCert(), d.ClientKey()
	}
	c, err := ClientConfig(d.CA(), cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestNewConnectionsGetTheRotatedCertificateWithoutRestart(t *testing.T) {
	d, err := Generate(GenerateOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewReloader(d.ServerFiles(), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, r.Config(nil, true))
	before, err := dial(addr, clientOf(t, d, true))
	if err != nil {
		t.Fatal(err)
	}
	if before.SerialNumber.Cmp(fileSerial(t, d.ServerCert())) != 0 {
		t.Fatal("the server does not serve the certificate of its files")
	}
	if _, err := Generate(GenerateOptions{Dir: string(d), Renew: true}); err != nil {
		t.Fatal(err)
	}
	after, err := dial(addr, clientOf(t, d, true))
	if err != nil {
		t.Fatalf("after the rotation: %v", err)
	}
	if after.SerialNumber.Cmp(before.SerialNumber) == 0 || after.SerialNumber.Cmp(fileSerial(t, d.ServerCert())) != 0 {
		t.Fatalf("after the rotation the server still serves serial %x", after.SerialNumber)
	}
	if n := r.Reloads(); n != 1 {
		t.Fatalf("%d reloads, want 1", n)
	}
}

func TestAHalfDoneRotationKeepsServingThePreviousCertificate(t *testing.T) {
	d, err := Generate(GenerateOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewReloader(d.ServerFiles(), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, r.Config(nil, true))
	old := fileSerial(t, d.ServerCert())
	// A new certificate whose key has not arrived yet: the pair does not
	// match, so the service keeps the old one rather than failing handshakes.
	other, err := Generate(GenerateOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(other.ServerCert())
	if err := os.WriteFile(d.ServerCert()+".new", b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(d.ServerCert()+".new", d.ServerCert()); err != nil {
		t.Fatal(err)
	}
	got, err := dial(addr, clientOf(t, d, true))
	if err != nil {
		t.Fatalf("a broken pair on disk made the handshake fail: %v", err)
	}
	if got.SerialNumber.Cmp(old) != 0 {
		t.Fatalf("served serial %x, want the previous %x", got.SerialNumber, old)
	}
	// The key arrives (here: a fresh matching pair): the next connection
	// gets it.
	if _, err := Generate(GenerateOptions{Dir: string(d), Renew: true}); err != nil {
		t.Fatal(err)
	}
	got, err = dial(addr, clientOf(t, d, true))
	if err != nil {
		t.Fatal(err)
	}
	if got.SerialNumber.Cmp(fileSerial(t, d.ServerCert())) != 0 {
		t.Fatalf("served serial %x after the pair was complete again, want the new one", got.SerialNumber)
	}
}

func TestClientsWithoutACertificateFromTheClientCAAreRefused(t *testing.T) {
	d, err := Generate(GenerateOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := Generate(GenerateOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewReloader(d.ServerFiles(), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, r.Config(nil, true))
	foreignClient := clientOf(t, d, false)
	fc, err := tls.LoadX509KeyPair(foreign.ClientCert(), foreign.ClientKey())
	if err != nil {
		t.Fatal(err)
	}
	foreignClient.Certificates = []tls.Certificate{fc}
	serverAsClient := clientOf(t, d, false)
	sc, err := tls.LoadX509KeyPair(d.ServerCert(), d.ServerKey())
	if err != nil {
		t.Fatal(err)
	}
	serverAsClient.Certificates = []tls.Certificate{sc}
	cases := []struct {
		name string
		cfg  *tls.Config
		want string // "" = accepted
	}{
		{"the fleet's client certificate is accepted", clientOf(t, d, true), ""},
		{"no client certificate", clientOf(t, d, false), "certificate required"},
		{"a client certificate from another CA", foreignClient, "unknown certificate authority"},
		{"the server's own certificate (no client auth usage)", serverAsClient, "bad certificate"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := dial(addr, c.cfg)
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.want != "" && err == nil:
				t.Fatal("accepted")
			case c.want != "" && !strings.Contains(err.Error(), c.want):
				t.Fatalf("refused with %q, want %q", err, c.want)
			}
		})
	}
}

func TestAPIConfigServesTLSWithoutAskingForAClientCertificate(t *testing.T) {
	d, err := Generate(GenerateOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewReloader(d.ServerFiles(), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dial(serve(t, r.Config(nil, false)), clientOf(t, d, false)); err != nil {
		t.Fatalf("a token API refused a client without a certificate: %v", err)
	}
}

func TestReloaderRefusesAnIncompleteSetOfFiles(t *testing.T) {
	d, err := Generate(GenerateOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []ServerFiles{
		{Cert: d.ServerCert()},
		{Key: d.ServerKey(), ClientCA: d.CA()},
		{Cert: d.ServerCert(), Key: d.ClientKey()},
		{Cert: d.ServerCert(), Key: d.ServerKey(), ClientCA: d.ServerKey()},
	} {
		if _, err := NewReloader(f, quietLog()); err == nil {
			t.Errorf("%+v accepted", f)
		}
	}
}
