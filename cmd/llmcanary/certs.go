package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/llmcanary/llmcanary/internal/mtls"
)

func init() {
	register(command{
		Name:    "certs",
		Summary: "create a local CA and the certificates of the services and of Envoy (mTLS)",
		Run:     func(ctx context.Context, args []string) error { return runCerts(args, os.Stdout) },
	})
}

func runCerts(args []string, out io.Writer) error {
	fs := newFlagSet("certs", `Makes --dir a certificate directory: a CA (kept when present), the services'
server certificate (valid for 127.0.0.1, ::1, localhost and --hosts), Envoy's
client certificate, and the two file-SDS files Envoy reads them through. Run
it again with --renew to rotate the server and client certificates: the
services and Envoy pick the new files up without a restart. 'llmcanary up'
and the demo run it for themselves.

  services:  --tls-cert DIR/server.pem --tls-key DIR/server-key.pem --tls-client-ca DIR/ca.pem
  Envoy:     llmcanary bootstrap --tls-dir DIR;  llmcanary control --extproc-tls-dir DIR
  CLIs:      --ca DIR/ca.pem (or LLMCANARY_CA)`)
	dir := fs.String("dir", "llmcanary-tls", "directory of the CA, the certificates and Envoy's SDS files")
	hosts := fs.String("hosts", "", "comma-separated extra DNS names and IP addresses of the server certificate")
	validity := fs.Duration("validity", mtls.DefaultValidity, "validity of the server and client certificates")
	renew := fs.Bool("renew", false, "issue new server and client certificates from the existing CA (rotation)")
	sdsOnly := fs.Bool("envoy-sds-only", false, "only write Envoy's SDS files for ca.pem, client.pem and client-key.pem already in --dir (certificates from your own PKI)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if *sdsOnly {
		d := mtls.Dir(*dir)
		for _, p := range []string{d.CA(), d.ClientCert(), d.ClientKey()} {
			if _, err := os.Stat(p); err != nil {
				return fmt.Errorf("--envoy-sds-only: %w", err)
			}
		}
		if err := mtls.WriteEnvoySDS(d); err != nil {
			return err
		}
		fmt.Fprintf(out, "wrote %s and %s\n", d.EnvoyClientSDS(), d.EnvoyCASDS())
		return nil
	}
	var extra []string
	for _, h := range strings.Split(*hosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			extra = append(extra, h)
		}
	}
	d, err := mtls.Generate(mtls.GenerateOptions{Dir: *dir, Hosts: extra, Validity: *validity, Renew: *renew})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, `certificates in %s (server and client valid %v)
  CA                   %s
  services             --tls-cert %s --tls-key %s --tls-client-ca %s
  Envoy (SDS)          %s, %s
`, d, validity.Round(time.Hour), d.CA(), d.ServerCert(), d.ServerKey(), d.CA(), d.EnvoyClientSDS(), d.EnvoyCASDS())
	return nil
}
