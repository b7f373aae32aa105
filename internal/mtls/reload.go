// Package mtls is the transport security between llmcanary's parts: the
// services (control plane, telemetry, analyzer) serve certificates read from
// files and reread them when the files change, so certificates rotate
// without a restart; they ask Envoy for a client certificate signed by the
// fleet's CA, so nobody else can stream telemetry or pose as an Envoy. The
// package also issues a local CA and certificates for `llmcanary up`, the
// demo and the tests, and says how Envoy finds its own certificate (file
// SDS).
package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// ServerFiles name the PEM files of a service's TLS identity. The JSON
// names are those of the YAML config files.
type ServerFiles struct {
	// Cert is the server certificate chain, leaf first; Key its private key.
	Cert string `json:"cert,omitempty"`
	Key  string `json:"key,omitempty"`
	// ClientCA holds the CA certificates a client certificate must chain
	// to. Where it is set the service refuses clients without one.
	ClientCA string `json:"client_ca,omitempty"`
}

// Enabled reports whether any file is named: the service then serves TLS.
func (f ServerFiles) Enabled() bool { return f.Cert != "" || f.Key != "" || f.ClientCA != "" }

// Validate reports an incomplete set: a certificate needs its key, and a
// client CA is only checked by a TLS server.
func (f ServerFiles) Validate() error {
	if !f.Enabled() {
		return nil
	}
	var errs []error
	if f.Cert == "" {
		errs = append(errs, errors.New("tls: a certificate file is required (--tls-cert)"))
	}
	if f.Key == "" {
		errs = append(errs, errors.New("tls: a key file is required (--tls-key)"))
	}
	return errors.Join(errs...)
}

// Reloader serves the current contents of a ServerFiles. Every handshake
// looks at the files (a stat each, cheap next to the handshake itself) and
// loads them again when one changed, so a new connection gets the new
// certificate as soon as it is in place and the open ones keep theirs.
// A rotation must replace the files whole (write elsewhere, then rename):
// a certificate that does not match its key, or a file cut short, keeps
// the previous identity in service — and is logged — until the pair is
// complete again. Safe for concurrent use.
type Reloader struct {
	files ServerFiles
	log   *slog.Logger

	mu      sync.Mutex
	stamp   [3]stamp
	cert    *tls.Certificate
	pool    *x509.CertPool
	failed  [3]stamp // the stamps of the last failed load, logged once
	reloads int
}

// stamp identifies one version of a file: the file (device and inode, so a
// rename onto the path counts), its size and modification time.
type stamp struct {
	info os.FileInfo
}

func (a stamp) same(b stamp) bool {
	if a.info == nil || b.info == nil {
		return a.info == nil && b.info == nil
	}
	return os.SameFile(a.info, b.info) && a.info.Size() == b.info.Size() && a.info.ModTime().Equal(b.info.ModTime())
}

// NewReloader loads the files once; an error here means the service cannot
// start with them.
func NewReloader(f ServerFiles, log *slog.Logger) (*Reloader, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	if !f.Enabled() {
		return nil, errors.New("tls: no certificate files")
	}
	if log == nil {
		log = slog.Default()
	}
	r := &Reloader{files: f, log: log}
	st, err := r.stat()
	if err != nil {
		return nil, err
	}
	if err := r.load(st); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Reloader) stat() ([3]stamp, error) {
	var st [3]stamp
	for i, p := range []string{r.files.Cert, r.files.Key, r.files.ClientCA} {
		if p == "" {
			continue
		}
		fi, err := os.Stat(p)
		if err != nil {
			return st, fmt.Errorf("tls: %w", err)
		}
		st[i] = stamp{fi}
	}
	return st, nil
}

// load reads the files; on success they are what the next handshakes use.
func (r *Reloader) load(st [3]stamp) error {
	cert, err := tls.LoadX509KeyPair(r.files.Cert, r.files.Key)
	if err != nil {
		return fmt.Errorf("tls: certificate %s and key %s: %w", r.files.Cert, r.files.Key, err)
	}
	var pool *x509.CertPool
	if r.files.ClientCA != "" {
		pem, err := os.ReadFile(r.files.ClientCA)
		if err != nil {
			return fmt.Errorf("tls: client ca: %w", err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("tls: client ca %s holds no PEM certificate", r.files.ClientCA)
		}
	}
	r.cert, r.pool, r.stamp = &cert, pool, st
	return nil
}

// current returns the identity to serve, reloading it first when a file
// changed since it was loaded.
func (r *Reloader) current() (*tls.Certificate, *x509.CertPool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, err := r.stat()
	if err == nil && sameStamps(st, r.stamp) {
		return r.cert, r.pool
	}
	if err == nil {
		if sameStamps(st, r.failed) {
			return r.cert, r.pool // this broken version was already reported
		}
		if err = r.load(st); err == nil {
			r.reloads++
			r.failed = [3]stamp{}
			r.log.Info("tls: certificate files changed; new connections get the new certificate",
				"cert", r.files.Cert, "serial", serial(r.cert), "not_after", notAfter(r.cert))
			return r.cert, r.pool
		}
		r.failed = st
	}
	r.log.Error("tls: cannot load the changed certificate files; still serving the previous ones", "error", err)
	return r.cert, r.pool
}

func sameStamps(a, b [3]stamp) bool { return a[0].same(b[0]) && a[1].same(b[1]) && a[2].same(b[2]) }

// Reloads counts the reloads after the first load.
func (r *Reloader) Reloads() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reloads
}

// RequiresClientCert reports whether the files name a client CA.
func (r *Reloader) RequiresClientCert() bool { return r.files.ClientCA != "" }

// Config returns the server tls.Config of one listener. nextProtos are its
// ALPN protocols (gRPC needs "h2"). With clientAuth true and a client CA
// the handshake fails for a client without a certificate chaining to the
// CA; with clientAuth false no client certificate is asked for (an API
// that authorises by bearer token).
func (r *Reloader) Config(nextProtos []string, clientAuth bool) *tls.Config {
	base := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: nextProtos}
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		cert, pool := r.current()
		c := &tls.Config{
			MinVersion:   tls.VersionTLS12,
			NextProtos:   nextProtos,
			Certificates: []tls.Certificate{*cert},
		}
		if clientAuth && pool != nil {
			c.ClientAuth, c.ClientCAs = tls.RequireAndVerifyClientCert, pool
		}
		return c, nil
	}
	return base
}

func serial(c *tls.Certificate) string {
	if leaf := leafOf(c); leaf != nil {
		return leaf.SerialNumber.Text(16)
	}
	return ""
}

func notAfter(c *tls.Certificate) time.Time {
	if leaf := leafOf(c); leaf != nil {
		return leaf.NotAfter
	}
	return time.Time{}
}

func leafOf(c *tls.Certificate) *x509.Certificate {
	if c.Leaf != nil {
		return c.Leaf
	}
	if len(c.Certificate) == 0 {
		return nil
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return nil
	}
	return leaf
}
