// Package envoy holds the Envoy bootstrap llmcanary gateways start from and
// renders it for one node.
package envoy

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"text/template"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/llmcanary/llmcanary/internal/mtls"
)

//go:embed bootstrap.yaml.tmpl
var bootstrapTemplate string

var tmpl = template.Must(template.New("bootstrap").Parse(bootstrapTemplate))

// BootstrapOptions describe one Envoy of the fleet.
type BootstrapOptions struct {
	NodeID  string // unique per Envoy
	Cluster string // the fleet's name
	// XDS is the control plane's xDS address, host:port, or the addresses
	// of several control plane replicas separated by commas, in the order
	// this Envoy prefers them: it streams from the first healthy one and
	// moves to the next when that one dies (see xdsHealth).
	XDS       string
	AdminPort int
	// Delta selects incremental xDS (DELTA_GRPC) instead of state of the world.
	Delta bool
	// ListenerAddress and ListenerPort, when set, make this node's listener
	// bind elsewhere than the fleet's (several Envoys on one host).
	ListenerAddress string
	ListenerPort    int
	// MaxConnections caps active downstream connections (default 50000).
	MaxConnections int
	// TLSDir, when set, makes Envoy reach the control plane over mTLS: it
	// is a directory on this host holding the SDS files of Envoy's client
	// certificate and of the CA (`llmcanary certs` writes them). Envoy
	// rereads the certificates when they are replaced. Empty: plaintext,
	// for development only — anyone who reaches the xDS port could then
	// pose as an Envoy.
	TLSDir string
}

// Validate reports every problem with the options.
func (o BootstrapOptions) Validate() error {
	var errs []error
	if o.NodeID == "" {
		errs = append(errs, errors.New("node id is required"))
	}
	if o.Cluster == "" {
		errs = append(errs, errors.New("cluster is required"))
	}
	if _, err := xdsEndpoints(o.XDS); err != nil {
		errs = append(errs, err)
	}
	if o.AdminPort <= 0 || o.AdminPort > 65535 {
		errs = append(errs, fmt.Errorf("admin port %d out of range", o.AdminPort))
	}
	if o.ListenerPort < 0 || o.ListenerPort > 65535 {
		errs = append(errs, fmt.Errorf("listener port %d out of range", o.ListenerPort))
	}
	return errors.Join(errs...)
}

// Bootstrap renders the bootstrap YAML for one Envoy.
func Bootstrap(o BootstrapOptions) ([]byte, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.MaxConnections == 0 {
		o.MaxConnections = 50000
	}
	eps, _ := xdsEndpoints(o.XDS)
	allIPs := true
	for _, e := range eps {
		if _, err := netip.ParseAddr(e.Host); err != nil {
			allIPs = false
		}
	}
	// The transport socket is the one the control plane publishes for the
	// ext_proc cluster, rendered as JSON (a YAML flow mapping): one
	// definition of how Envoy reaches an llmcanary service.
	var socket string
	if o.TLSDir != "" {
		ts, err := mtls.UpstreamTLS(o.TLSDir)
		if err != nil {
			return nil, err
		}
		j, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(ts)
		if err != nil {
			return nil, fmt.Errorf("render bootstrap: %w", err)
		}
		socket = string(j)
	}
	var buf bytes.Buffer
	err := tmpl.Execute(&buf, struct {
		BootstrapOptions
		XDSEndpoints        []xdsEndpoint
		XDSIsIP             bool
		RetryBase, RetryMax string
		HealthInterval      string
		TransportSocket     string
	}{o, eps, allIPs, protoDuration(XDSRetryBaseInterval), protoDuration(XDSRetryMaxInterval), protoDuration(XDSHealthInterval), socket})
	if err != nil {
		return nil, fmt.Errorf("render bootstrap: %w", err)
	}
	return buf.Bytes(), nil
}

// xdsEndpoint is one control plane replica's xDS address.
type xdsEndpoint struct {
	Host string
	Port int
}

// xdsEndpoints splits the comma-separated xDS addresses.
func xdsEndpoints(list string) ([]xdsEndpoint, error) {
	var out []xdsEndpoint
	seen := map[string]bool{}
	for _, addr := range strings.Split(list, ",") {
		addr = strings.TrimSpace(addr)
		host, port, err := splitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("xds address: %w", err)
		}
		if seen[addr] {
			return nil, fmt.Errorf("xds address %s is listed twice", addr)
		}
		seen[addr] = true
		out = append(out, xdsEndpoint{host, port})
	}
	return out, nil
}

func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port <= 0 || port > 65535 || host == "" {
		return "", 0, fmt.Errorf("%q is not host:port", addr)
	}
	return host, port, nil
}

// The backoff of the ADS stream's reconnects. Envoy waits a random time
// below min(base·2ⁿ, max) before attempt n, so once the control plane is
// back an Envoy reconnects within XDSRetryMaxInterval plus a connect. The
// default (500 ms, 30 s) would leave a rollback unapplied for up to 30 s;
// a reconnect attempt to a loopback or LAN control plane costs nothing.
const (
	XDSRetryBaseInterval = 100 * time.Millisecond
	XDSRetryMaxInterval  = 500 * time.Millisecond
)

// XDSHealthInterval is how often an Envoy bootstrapped with several control
// plane replicas checks each one (gRPC health checking, grpc.health.v1):
// the ADS stream's cluster lists the replicas at priorities in the order
// given, and a new stream goes to the first healthy one. A stream broken
// by a dead replica is retried after the backoff above; once that
// replica's check has failed (within an interval) the retry reaches the
// next replica. Envoy keeps its configuration in the meantime. Over mTLS
// the first checks fail (the SDS certificates load just after they start),
// so at start the stream goes to whichever replica passes first.
const XDSHealthInterval = 500 * time.Millisecond

// protoDuration writes d as a protobuf JSON/YAML duration ("0.100s").
func protoDuration(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', 3, 64) + "s"
}
