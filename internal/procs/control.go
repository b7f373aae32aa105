package procs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/llmcanary/llmcanary/internal/mtls"
)

// ControlOptions describe one `llmcanary control` process on loopback.
type ControlOptions struct {
	Name  string // names the log file; several replicas share Dir
	Dir   string // logs and the token file
	Token string // the management API's token
	// ListenerPort is the fleet's Envoy listener port (on 127.0.0.1).
	ListenerPort int
	// TLS serves both ports over TLS, the xDS port asking Envoys for a
	// client certificate from TLS.ClientCA; unset: plaintext.
	TLS mtls.ServerFiles
	// Args are extra flags, e.g. --etcd-endpoints or --data-dir.
	Args []string
}

// Control is a running `llmcanary control`: a real process, so tests can
// kill it as a crash would while its Envoys keep running.
type Control struct {
	XDS    string // the xDS address, host:port
	APIURL string // the management API's base URL
	Proc   *Proc
}

// StartControl starts `llmcanary control` on free loopback ports and waits
// until its management API answers.
func StartControl(ctx context.Context, o ControlOptions) (*Control, error) {
	bin, err := LlmcanaryBinary()
	if err != nil {
		return nil, err
	}
	ports, err := FreePorts(2)
	if err != nil {
		return nil, err
	}
	token := filepath.Join(o.Dir, o.Name+"-token")
	if err := os.WriteFile(token, []byte(o.Token), 0o600); err != nil {
		return nil, err
	}
	xdsAddr, api := "127.0.0.1:"+strconv.Itoa(ports[0]), "127.0.0.1:"+strconv.Itoa(ports[1])
	args := append([]string{"control", "--xds-listen", xdsAddr, "--api-listen", api, "--token-file", token,
		"--listener-address", "127.0.0.1", "--listener-port", strconv.Itoa(o.ListenerPort)}, o.Args...)
	scheme := "http"
	if o.TLS.Enabled() {
		args = append(args, "--tls-cert", o.TLS.Cert, "--tls-key", o.TLS.Key, "--tls-client-ca", o.TLS.ClientCA)
		scheme = "https"
	}
	p, err := StartProc("control "+o.Name, filepath.Join(o.Dir, "control-"+o.Name+".log"), bin, args...)
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := WaitTCP(wctx, api); err != nil {
		p.Kill()
		return nil, fmt.Errorf("control plane %s did not start: %w\n%s", o.Name, err, p.Tail(30))
	}
	return &Control{XDS: xdsAddr, APIURL: scheme + "://" + api, Proc: p}, nil
}
