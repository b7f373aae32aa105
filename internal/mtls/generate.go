package mtls

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/llmcanary/llmcanary/internal/durable"
)

// The files of a certificate directory, as Generate writes them. The
// services read the server pair and the CA (which also signs the client
// certificates they accept); Envoy reads the client pair and the CA through
// the two SDS files.
const (
	CAFile         = "ca.pem"
	CAKeyFile      = "ca-key.pem"
	ServerCertFile = "server.pem"
	ServerKeyFile  = "server-key.pem"
	ClientCertFile = "client.pem"
	ClientKeyFile  = "client-key.pem"
)

// Defaults of GenerateOptions.
const (
	DefaultValidity   = 90 * 24 * time.Hour
	DefaultCAValidity = 10 * 365 * 24 * time.Hour
)

// Dir is a certificate directory; its methods return the files' paths.
type Dir string

func (d Dir) file(name string) string { return filepath.Join(string(d), name) }

// CA is the CA certificate: the services' client CA and the root Envoy and
// the CLIs verify the services with.
func (d Dir) CA() string { return d.file(CAFile) }

// ServerCert and ServerKey are the services' pair.
func (d Dir) ServerCert() string { return d.file(ServerCertFile) }
func (d Dir) ServerKey() string  { return d.file(ServerKeyFile) }

// ClientCert and ClientKey are Envoy's pair.
func (d Dir) ClientCert() string { return d.file(ClientCertFile) }
func (d Dir) ClientKey() string  { return d.file(ClientKeyFile) }

// ServerFiles are the services' TLS files: their pair, and the CA as the
// client CA.
func (d Dir) ServerFiles() ServerFiles {
	return ServerFiles{Cert: d.ServerCert(), Key: d.ServerKey(), ClientCA: d.CA()}
}

// GenerateOptions shape Generate.
type GenerateOptions struct {
	// Dir receives the files; it is created if missing.
	Dir string
	// Hosts are names and IP addresses the server certificate is valid for
	// besides 127.0.0.1, ::1 and localhost.
	Hosts []string
	// Validity of the server and client certificates; zero means
	// DefaultValidity. The CA is valid for DefaultCAValidity.
	Validity time.Duration
	// Renew issues new server and client certificates from the existing CA
	// even when valid ones are present: the rotation the services and Envoy
	// pick up without a restart.
	Renew bool
}

// Generate makes dir a certificate directory. An existing CA is kept (so
// the services and Envoy keep trusting each other across runs); the server
// and client certificates are issued when missing, not signed by the CA,
// expiring within a third of their validity, missing a requested host, or
// when Renew asks for it. Every file is replaced whole (a temporary file
// renamed into place), keys readable by the owner only; the file watchers
// of the services and of Envoy see each file change once. Finally it writes
// Envoy's SDS files for the directory (WriteEnvoySDS).
func Generate(o GenerateOptions) (Dir, error) {
	if o.Dir == "" {
		return "", errors.New("certs: a directory is required")
	}
	if o.Validity == 0 {
		o.Validity = DefaultValidity
	}
	if o.Validity < 0 {
		return "", errors.New("certs: validity must be positive")
	}
	abs, err := filepath.Abs(o.Dir)
	if err != nil {
		return "", fmt.Errorf("certs: %w", err)
	}
	d := Dir(abs)
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return "", fmt.Errorf("certs: %w", err)
	}
	ca, caKey, fresh, err := loadOrCreateCA(d)
	if err != nil {
		return "", err
	}
	hosts := append([]string{"127.0.0.1", "::1", "localhost"}, o.Hosts...)
	now := time.Now()
	leaves := []struct {
		cert, key string
		tmpl      func() *x509.Certificate
	}{
		{d.ServerCert(), d.ServerKey(), func() *x509.Certificate { return serverTemplate(hosts) }},
		{d.ClientCert(), d.ClientKey(), clientTemplate},
	}
	for _, l := range leaves {
		if !o.Renew && !fresh && leafUsable(l.cert, ca, l.tmpl(), now, o.Validity) {
			continue
		}
		t := l.tmpl()
		t.NotBefore, t.NotAfter = now.Add(-time.Minute), now.Add(o.Validity)
		if err := issue(t, ca, caKey, l.cert, l.key); err != nil {
			return "", err
		}
	}
	if err := WriteEnvoySDS(d); err != nil {
		return "", err
	}
	return d, nil
}

func loadOrCreateCA(d Dir) (*x509.Certificate, crypto.Signer, bool, error) {
	certPEM, cerr := os.ReadFile(d.CA())
	keyPEM, kerr := os.ReadFile(d.file(CAKeyFile))
	if cerr == nil && kerr == nil {
		ca, err := parseCert(certPEM)
		if err != nil {
			return nil, nil, false, fmt.Errorf("certs: %s: %w", d.CA(), err)
		}
		key, err := parseKey(keyPEM)
		if err != nil {
			return nil, nil, false, fmt.Errorf("certs: %s: %w", d.file(CAKeyFile), err)
		}
		return ca, key, false, nil
	}
	for _, err := range []error{cerr, kerr} {
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, nil, false, fmt.Errorf("certs: %w", err)
		}
	}
	if (cerr == nil) != (kerr == nil) {
		return nil, nil, false, fmt.Errorf("certs: %s and %s must both exist or both be absent", d.CA(), d.file(CAKeyFile))
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, false, fmt.Errorf("certs: %w", err)
	}
	now := time.Now()
	t := &x509.Certificate{
		SerialNumber:          newSerial(),
		Subject:               pkix.Name{CommonName: "llmcanary local CA", Organization: []string{"llmcanary"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(DefaultCAValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, t, t, key.Public(), key)
	if err != nil {
		return nil, nil, false, fmt.Errorf("certs: create ca: %w", err)
	}
	ca, _ := x509.ParseCertificate(der)
	if err := writeKey(d.file(CAKeyFile), key); err != nil {
		return nil, nil, false, err
	}
	if err := durable.WriteFilePerm(d.CA(), pemBlock("CERTIFICATE", der), 0o644); err != nil {
		return nil, nil, false, fmt.Errorf("certs: %w", err)
	}
	return ca, key, true, nil
}

// serverTemplate is the services' certificate: server authentication only,
// so it cannot pass for Envoy.
func serverTemplate(hosts []string) *x509.Certificate {
	t := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "llmcanary services", Organization: []string{"llmcanary"}},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			t.IPAddresses = append(t.IPAddresses, ip)
		} else if h != "" && !slices.Contains(t.DNSNames, h) {
			t.DNSNames = append(t.DNSNames, h)
		}
	}
	return t
}

// clientTemplate is Envoy's certificate: client authentication only, so it
// cannot pass for a service.
func clientTemplate() *x509.Certificate {
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: "llmcanary envoy", Organization: []string{"llmcanary"}},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
}

// leafUsable reports whether the certificate at path is signed by ca,
// valid for another third of validity at least, and covers every name and
// address of want.
func leafUsable(path string, ca *x509.Certificate, want *x509.Certificate, now time.Time, validity time.Duration) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	c, err := parseCert(b)
	if err != nil || c.CheckSignatureFrom(ca) != nil || now.Add(validity/3).After(c.NotAfter) {
		return false
	}
	for _, n := range want.DNSNames {
		if !slices.Contains(c.DNSNames, n) {
			return false
		}
	}
	for _, ip := range want.IPAddresses {
		if !slices.ContainsFunc(c.IPAddresses, ip.Equal) {
			return false
		}
	}
	return true
}

// issue signs t with the CA and writes the key, then the certificate.
func issue(t, ca *x509.Certificate, caKey crypto.Signer, certPath, keyPath string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	t.SerialNumber = newSerial()
	der, err := x509.CreateCertificate(rand.Reader, t, ca, key.Public(), caKey)
	if err != nil {
		return fmt.Errorf("certs: issue %s: %w", certPath, err)
	}
	if err := writeKey(keyPath, key); err != nil {
		return err
	}
	if err := durable.WriteFilePerm(certPath, pemBlock("CERTIFICATE", der), 0o644); err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	return nil
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	if err := durable.WriteFilePerm(path, pemBlock("PRIVATE KEY", der), 0o600); err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	return nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func parseCert(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}

func parseKey(b []byte) (crypto.Signer, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM key")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		if ek, eerr := x509.ParseECPrivateKey(blk.Bytes); eerr == nil {
			return ek, nil
		}
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("key cannot sign")
	}
	return s, nil
}

func newSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return n.Add(n, big.NewInt(1))
}

// writeIfChanged replaces path with data (mode perm) unless it holds data
// already, so a rerun does not wake the file watchers for nothing.
func writeIfChanged(path string, data []byte, perm os.FileMode) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}
	return durable.WriteFilePerm(path, data, perm)
}
