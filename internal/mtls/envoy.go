package mtls

import (
	"fmt"
	"path/filepath"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"
)

// Envoy reads its client certificate and the CA through file-based SDS:
// two files in the certificate directory, each a discovery response with
// one secret that names the PEM files by absolute path. Envoy watches the
// directory and rereads the PEM files when one is moved into it, so a
// rotation (Generate with Renew, or any tool that renames new files into
// place) reaches new connections without a restart. The bootstrap's xDS
// cluster and the ext_proc cluster the control plane publishes both point
// at these files.
const (
	EnvoyClientSDSFile = "envoy-client-sds.yaml"
	EnvoyCASDSFile     = "envoy-ca-sds.yaml"
	// SecretClientCert and SecretCA are the secrets' names.
	SecretClientCert = "llmcanary_client_cert"
	SecretCA         = "llmcanary_ca"
)

// EnvoyClientSDS and EnvoyCASDS are the SDS files' paths.
func (d Dir) EnvoyClientSDS() string { return d.file(EnvoyClientSDSFile) }
func (d Dir) EnvoyCASDS() string     { return d.file(EnvoyCASDSFile) }

// EnvoySecrets returns the two secrets of a certificate directory.
func EnvoySecrets(d Dir) (client, ca *tlsv3.Secret) {
	watch := &corev3.WatchedDirectory{Path: string(d)}
	client = &tlsv3.Secret{Name: SecretClientCert, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: fileSource(d.ClientCert()),
		PrivateKey:       fileSource(d.ClientKey()),
		WatchedDirectory: watch,
	}}}
	ca = &tlsv3.Secret{Name: SecretCA, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa:        fileSource(d.CA()),
		WatchedDirectory: watch,
	}}}
	return client, ca
}

func fileSource(path string) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: path}}
}

// WriteEnvoySDS writes the directory's two SDS files (unchanged files are
// left alone). The directory must be where Envoy finds it: the files name
// the PEM files by absolute path. For certificates from another PKI, put
// ca.pem, client.pem and client-key.pem in a directory and call this (or
// `llmcanary certs --envoy-sds-only`).
func WriteEnvoySDS(d Dir) error {
	abs, err := filepath.Abs(string(d))
	if err != nil {
		return fmt.Errorf("envoy sds: %w", err)
	}
	d = Dir(abs)
	client, ca := EnvoySecrets(d)
	for path, s := range map[string]*tlsv3.Secret{d.EnvoyClientSDS(): client, d.EnvoyCASDS(): ca} {
		b, err := sdsFile(s)
		if err != nil {
			return err
		}
		if err := writeIfChanged(path, b, 0o644); err != nil {
			return fmt.Errorf("envoy sds: %w", err)
		}
	}
	return nil
}

// sdsFile renders one secret as the YAML discovery response Envoy's file
// SDS reads.
func sdsFile(s *tlsv3.Secret) ([]byte, error) {
	if err := s.ValidateAll(); err != nil {
		return nil, fmt.Errorf("envoy sds: %w", err)
	}
	a, err := anypb.New(s)
	if err != nil {
		return nil, fmt.Errorf("envoy sds: %w", err)
	}
	j, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(&discoveryv3.DiscoveryResponse{Resources: []*anypb.Any{a}})
	if err != nil {
		return nil, fmt.Errorf("envoy sds: %w", err)
	}
	y, err := yaml.JSONToYAML(j)
	if err != nil {
		return nil, fmt.Errorf("envoy sds: %w", err)
	}
	return append([]byte("# Envoy file SDS, written by llmcanary certs: "+s.GetName()+"\n"), y...), nil
}

// UpstreamTLS returns the transport socket of an Envoy cluster that
// reaches an llmcanary service over mTLS: Envoy presents the client
// certificate of the SDS files in dir (a directory on the Envoy hosts) and
// accepts only a server certificate chaining to the CA there. ALPN h2: the
// services speak gRPC, and gRPC servers require the protocol be negotiated.
func UpstreamTLS(dir string) (*corev3.TransportSocket, error) {
	d := Dir(dir)
	sds := func(path string) *corev3.ConfigSource {
		return &corev3.ConfigSource{
			ResourceApiVersion: corev3.ApiVersion_V3,
			ConfigSourceSpecifier: &corev3.ConfigSource_PathConfigSource{
				PathConfigSource: &corev3.PathConfigSource{Path: path},
			},
		}
	}
	ctx := &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		AlpnProtocols: []string{"h2"},
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{
			{Name: SecretClientCert, SdsConfig: sds(d.EnvoyClientSDS())},
		},
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
			ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: SecretCA, SdsConfig: sds(d.EnvoyCASDS())},
		},
	}}
	if err := ctx.ValidateAll(); err != nil {
		return nil, fmt.Errorf("upstream tls: %w", err)
	}
	a, err := anypb.New(ctx)
	if err != nil {
		return nil, fmt.Errorf("upstream tls: %w", err)
	}
	return &corev3.TransportSocket{
		Name:       "envoy.transport_sockets.tls",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a},
	}, nil
}
