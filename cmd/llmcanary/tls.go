package main

import (
	"flag"
	"fmt"
	"net/http"

	"github.com/llmcanary/llmcanary/internal/mtls"
)

// bindServerTLS binds the TLS flags every llmcanary service takes, so the
// control plane, the telemetry service and the analyzer are configured
// alike. clientCA is false for a service whose only port is a token API.
func bindServerTLS(fs *flag.FlagSet, f *mtls.ServerFiles, clientCA bool, what string) {
	fs.StringVar(&f.Cert, "tls-cert", f.Cert, "PEM certificate chain served on "+what+"; reread when the file changes (empty: plaintext, development only)")
	fs.StringVar(&f.Key, "tls-key", f.Key, "PEM private key of --tls-cert; reread when the file changes")
	if clientCA {
		fs.StringVar(&f.ClientCA, "tls-client-ca", f.ClientCA, "PEM CA certificates Envoy's client certificate must chain to; clients without one are refused")
	}
}

// apiCredentials reads a CLI's API token (see readToken) and builds its
// HTTP client, trusting caFile when the API serves TLS with a private CA.
func apiCredentials(tokenFile, caFile string) (string, *http.Client, error) {
	token, err := readToken(tokenFile)
	if err != nil {
		return "", nil, err
	}
	c, err := mtls.HTTPClient(caFile)
	if err != nil {
		return "", nil, fmt.Errorf("--ca: %w", err)
	}
	return token, c, nil
}
