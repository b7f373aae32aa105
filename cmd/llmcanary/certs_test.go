package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/llmcanary/llmcanary/envoy"
	"github.com/llmcanary/llmcanary/internal/mtls"
)

func TestCertsWritesTheFilesTheServicesAndEnvoyReadAndRenewRotatesThem(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	var out bytes.Buffer
	if err := runCerts([]string{"--dir", dir, "--hosts", "cp.internal, 10.1.2.3"}, &out); err != nil {
		t.Fatal(err)
	}
	d := mtls.Dir(dir)
	for _, p := range []string{d.CA(), d.ServerCert(), d.ServerKey(), d.ClientCert(), d.ClientKey(), d.EnvoyClientSDS(), d.EnvoyCASDS()} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("certs did not write %s: %v", p, err)
		}
	}
	for _, want := range []string{"--tls-cert " + d.ServerCert(), "--tls-key " + d.ServerKey(), "--tls-client-ca " + d.CA()} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("the summary does not say %q:\n%s", want, out.String())
		}
	}
	// The services start with what certs wrote.
	r, err := mtls.NewReloader(d.ServerFiles(), nil)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(d.ServerCert())
	if err := runCerts([]string{"--dir", dir, "--renew"}, &out); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(d.ServerCert())
	if bytes.Equal(before, after) {
		t.Fatal("--renew left the server certificate as it was")
	}
	r.Config(nil, true).GetConfigForClient(nil)
	if r.Reloads() != 1 {
		t.Fatalf("a running service reloaded %d times after --renew, want 1", r.Reloads())
	}
}

func TestCertsWritesOnlyEnvoysSDSFilesForCertificatesFromAnotherPKI(t *testing.T) {
	src, err := mtls.Generate(mtls.GenerateOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var out bytes.Buffer
	if err := runCerts([]string{"--dir", dir, "--envoy-sds-only"}, &out); err == nil {
		t.Fatal("--envoy-sds-only accepted a directory without ca.pem and Envoy's pair")
	}
	for _, f := range []string{mtls.CAFile, mtls.ClientCertFile, mtls.ClientKeyFile} {
		b, err := os.ReadFile(filepath.Join(string(src), f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := runCerts([]string{"--dir", dir, "--envoy-sds-only"}, &out); err != nil {
		t.Fatal(err)
	}
	d := mtls.Dir(dir)
	b, err := os.ReadFile(d.EnvoyClientSDS())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), d.ClientCert()) {
		t.Fatalf("the SDS file does not name %s:\n%s", d.ClientCert(), b)
	}
	if _, err := os.Stat(d.ServerCert()); err == nil {
		t.Fatal("--envoy-sds-only issued a server certificate")
	}
}

func TestBootstrapWithATLSDirReachesTheControlPlaneThroughFileSDS(t *testing.T) {
	o := envoy.BootstrapOptions{NodeID: "gw-1", Cluster: "llmcanary", XDS: "127.0.0.1:18000", AdminPort: 9901}
	plain, err := envoy.Bootstrap(o)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(plain), "transport_socket") {
		t.Fatal("a bootstrap without --tls-dir has a transport socket")
	}
	o.TLSDir = "/etc/llmcanary/tls"
	b, err := envoy.Bootstrap(o)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		StaticResources struct {
			Clusters []struct {
				Name            string         `json:"name"`
				TransportSocket map[string]any `json:"transport_socket"`
			} `json:"clusters"`
		} `json:"static_resources"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("bootstrap is not YAML: %v\n%s", err, b)
	}
	c := doc.StaticResources.Clusters
	if len(c) != 1 || c[0].Name != "llmcanary_xds" || c[0].TransportSocket["name"] != "envoy.transport_sockets.tls" {
		t.Fatalf("xDS cluster %+v", c)
	}
	for _, p := range []string{"/etc/llmcanary/tls/" + mtls.EnvoyClientSDSFile, "/etc/llmcanary/tls/" + mtls.EnvoyCASDSFile} {
		if !strings.Contains(string(b), p) {
			t.Fatalf("bootstrap does not read %s:\n%s", p, b)
		}
	}
}
