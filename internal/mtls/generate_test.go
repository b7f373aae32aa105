package mtls

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := parseCert(b)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return c
}

func TestGenerateIssuesLoopbackServerAndEnvoyClientCertificatesFromOneCA(t *testing.T) {
	d, err := Generate(GenerateOptions{Dir: filepath.Join(t.TempDir(), "tls"), Hosts: []string{"cp.internal", "10.0.0.5"}, Validity: 48 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ca := readCert(t, d.CA())
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	server, client := readCert(t, d.ServerCert()), readCert(t, d.ClientCert())
	if !ca.IsCA || server.IsCA || client.IsCA {
		t.Fatalf("CA flags: ca %v server %v client %v", ca.IsCA, server.IsCA, client.IsCA)
	}
	for _, name := range []string{"localhost", "cp.internal"} {
		if _, err := server.Verify(x509.VerifyOptions{Roots: roots, DNSName: name}); err != nil {
			t.Errorf("server certificate for %s: %v", name, err)
		}
	}
	for _, ip := range []string{"127.0.0.1", "::1", "10.0.0.5"} {
		if err := server.VerifyHostname(ip); err != nil {
			t.Errorf("server certificate for %s: %v", ip, err)
		}
	}
	if _, err := server.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("the server certificate passes as a client certificate")
	}
	if _, err := client.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate: %v", err)
	}
	if _, err := client.Verify(x509.VerifyOptions{Roots: roots}); err == nil {
		t.Error("the client certificate passes as a server certificate")
	}
	if left := time.Until(server.NotAfter); left > 48*time.Hour || left < 47*time.Hour {
		t.Errorf("server certificate valid for another %v, want 48h", left)
	}
	for _, key := range []string{CAKeyFile, ServerKeyFile, ClientKeyFile} {
		fi, err := os.Stat(filepath.Join(string(d), key))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", key, fi.Mode().Perm())
		}
	}
}

func TestGenerateAgainKeepsWhatIsValidAndRenewRotatesTheLeavesOnly(t *testing.T) {
	dir := t.TempDir()
	d, err := Generate(GenerateOptions{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	serials := func() [3]string {
		return [3]string{readCert(t, d.CA()).SerialNumber.String(), readCert(t, d.ServerCert()).SerialNumber.String(), readCert(t, d.ClientCert()).SerialNumber.String()}
	}
	first := serials()
	if _, err := Generate(GenerateOptions{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	if again := serials(); again != first {
		t.Fatalf("a second run replaced valid files: %v → %v", first, again)
	}
	if _, err := Generate(GenerateOptions{Dir: dir, Renew: true}); err != nil {
		t.Fatal(err)
	}
	renewed := serials()
	if renewed[0] != first[0] || renewed[1] == first[1] || renewed[2] == first[2] {
		t.Fatalf("renew: CA, server, client serials %v → %v; want the CA kept and both leaves new", first, renewed)
	}
	if _, err := Generate(GenerateOptions{Dir: dir, Hosts: []string{"gw.example"}}); err != nil {
		t.Fatal(err)
	}
	withHost := serials()
	if withHost[1] == renewed[1] || withHost[2] != renewed[2] {
		t.Fatalf("a new host: server, client serials %v → %v; want only the server certificate reissued", renewed, withHost)
	}
	if !slices.Contains(readCert(t, d.ServerCert()).DNSNames, "gw.example") {
		t.Fatal("the reissued server certificate lacks the new host")
	}
	// A lost CA key cannot be recovered: refuse rather than mint a new CA
	// that nobody trusts yet.
	if err := os.Remove(filepath.Join(dir, CAKeyFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := Generate(GenerateOptions{Dir: dir}); err == nil {
		t.Fatal("a CA certificate without its key was accepted")
	}
}

func TestEnvoySDSFilesNameTheDirectorysCertificates(t *testing.T) {
	d, err := Generate(GenerateOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	client, ca := parseSDS(t, d.EnvoyClientSDS()), parseSDS(t, d.EnvoyCASDS())
	if client.GetName() != SecretClientCert || client.GetTlsCertificate().GetCertificateChain().GetFilename() != d.ClientCert() ||
		client.GetTlsCertificate().GetPrivateKey().GetFilename() != d.ClientKey() {
		t.Errorf("client secret %v", client)
	}
	if ca.GetName() != SecretCA || ca.GetValidationContext().GetTrustedCa().GetFilename() != d.CA() {
		t.Errorf("ca secret %v", ca)
	}
	for _, s := range []*tlsv3.Secret{client, ca} {
		if w := s.GetTlsCertificate().GetWatchedDirectory().GetPath() + s.GetValidationContext().GetWatchedDirectory().GetPath(); w != string(d) {
			t.Errorf("secret %s watches %q, want the directory %s", s.GetName(), w, d)
		}
	}
	ts, err := UpstreamTLS(string(d))
	if err != nil {
		t.Fatal(err)
	}
	var up tlsv3.UpstreamTlsContext
	if err := ts.GetTypedConfig().UnmarshalTo(&up); err != nil {
		t.Fatal(err)
	}
	common := up.GetCommonTlsContext()
	if p := common.GetTlsCertificateSdsSecretConfigs()[0].GetSdsConfig().GetPathConfigSource().GetPath(); p != d.EnvoyClientSDS() {
		t.Errorf("the transport socket reads its certificate from %s", p)
	}
	if p := common.GetValidationContextSdsSecretConfig().GetSdsConfig().GetPathConfigSource().GetPath(); p != d.EnvoyCASDS() {
		t.Errorf("the transport socket reads its CA from %s", p)
	}
	if !slices.Equal(common.GetAlpnProtocols(), []string{"h2"}) {
		t.Errorf("alpn %v, want h2 (gRPC)", common.GetAlpnProtocols())
	}
}

// parseSDS decodes an SDS file the way Envoy does (a discovery response
// with one secret) and validates the secret.
func parseSDS(t *testing.T, path string) *tlsv3.Secret {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		t.Fatal(err)
	}
	var dr discoveryv3.DiscoveryResponse
	if err := protojson.Unmarshal(j, &dr); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(dr.Resources) != 1 {
		t.Fatalf("%s: %d resources, want 1", path, len(dr.Resources))
	}
	var s tlsv3.Secret
	if err := dr.Resources[0].UnmarshalTo(&s); err != nil {
		t.Fatal(err)
	}
	if err := s.ValidateAll(); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return &s
}
