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

// apiHTTPClient is the HTTP client of a management API call: it verifies
// an https API against the CA in caFile (empty: the system's roots).
func apiHTTPClient(caFile string) (*http.Client, error) {
	c, err := mtls.HTTPClient(caFile)
	if err != nil {
		return nil, fmt.Errorf("--ca: %w", err)
	}
	return c, nil
}
