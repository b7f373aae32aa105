package main

import (
	"context"
	"os"

	"github.com/llmcanary/llmcanary/envoy"
)

func init() {
	register(command{
		Name:    "bootstrap",
		Summary: "print the Envoy bootstrap for one gateway of the fleet",
		Run: func(ctx context.Context, args []string) error {
			fs := newFlagSet("bootstrap", `Prints the bootstrap YAML an Envoy starts from: admin on loopback, ADS to the
control plane, everything else (listener, routes, clusters) over xDS.
Example: llmcanary bootstrap --node-id gw-1 --xds cp.internal:18000 --tls-dir /etc/llmcanary/tls > envoy.yaml`)
			var o envoy.BootstrapOptions
			fs.StringVar(&o.NodeID, "node-id", "", "unique id of this Envoy (required)")
			fs.StringVar(&o.Cluster, "cluster", "llmcanary", "name of the Envoy fleet")
			fs.StringVar(&o.XDS, "xds", "127.0.0.1:18000", "control plane xDS address, host:port; with replicas several, comma-separated, in the order this Envoy prefers them (it moves to the next healthy one when its replica dies)")
			fs.IntVar(&o.AdminPort, "admin-port", 9901, "Envoy admin port (bound on 127.0.0.1 only)")
			fs.BoolVar(&o.Delta, "delta", false, "use incremental (delta) xDS")
			fs.StringVar(&o.TLSDir, "tls-dir", "", "directory on this host with Envoy's SDS files (llmcanary certs): reach the control plane over mTLS (empty: plaintext, development only)")
			fs.StringVar(&o.ListenerAddress, "listener-address", "", "bind this node's listener here instead of the fleet's address")
			fs.IntVar(&o.ListenerPort, "listener-port", 0, "bind this node's listener on this port instead of the fleet's")
			if err := fs.Parse(args); err != nil {
				return err
			}
			b, err := envoy.Bootstrap(o)
			if err != nil {
				return err
			}
			_, err = os.Stdout.Write(b)
			return err
		},
	})
}
