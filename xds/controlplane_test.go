package xds

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/llmcanary/llmcanary/internal/mtls"
)

func TestOptionsRejectAnUntrustedCategoryHeaderAndAHalfTLSConfig(t *testing.T) {
	base := func() Options {
		o := DefaultOptions()
		o.Token = "t"
		return o
	}
	cases := []struct {
		name string
		edit func(*Options)
		want string // "" = valid
	}{
		{"defaults with a token", func(*Options) {}, ""},
		{"category header read from a trusted hop", func(o *Options) {
			o.Wasm = &WasmOptions{Path: "f.wasm", CategoryHeader: "x-team", CategoryHeaderTrusted: true}
		}, ""},
		{"category header without the trusted mark", func(o *Options) {
			o.Wasm = &WasmOptions{Path: "f.wasm", CategoryHeader: "x-team"}
		}, "category_header_trusted"},
		{"certificate without its key", func(o *Options) { o.TLS = mtls.ServerFiles{Cert: "c.pem"} }, "--tls-key"},
		{"client CA without a certificate", func(o *Options) { o.TLS = mtls.ServerFiles{ClientCA: "ca.pem"} }, "--tls-cert"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := base()
			c.edit(&o)
			err := o.Validate()
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("rejected: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("error %v, want one naming %s", err, c.want)
			}
		})
	}
}

// With TLS files the management API is https (its URL says so) and keeps
// answering the token; a client that trusts the CA reaches it.
func TestControlPlaneWithTLSServesTheAPIOverHTTPS(t *testing.T) {
	certs, err := mtls.Generate(mtls.GenerateOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	o := DefaultOptions()
	o.XDSListen, o.APIListen, o.DataDir, o.Token = "127.0.0.1:0", "127.0.0.1:0", t.TempDir(), "t"
	o.TLS = certs.ServerFiles()
	o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cp, err := Start(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Stop()
	if !strings.HasPrefix(cp.APIURL, "https://") {
		t.Fatalf("API URL %s", cp.APIURL)
	}
	hc, err := mtls.HTTPClient(certs.CA())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (&Client{BaseURL: cp.APIURL, Token: "t", HTTP: hc}).State(context.Background()); err != nil {
		t.Fatalf("https with the token: %v", err)
	}
	if _, err := (&Client{BaseURL: cp.APIURL, Token: "wrong", HTTP: hc}).State(context.Background()); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("https with a wrong token: %v, want 401", err)
	}
}
