package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/llmcanary/llmcanary/internal/config"
	"github.com/llmcanary/llmcanary/xds"
)

func init() {
	register(command{
		Name:    "control",
		Summary: "run the control plane: xDS server for the Envoy fleet and the management API",
		Run:     runControl,
	})
}

// bindControl registers the flags of `llmcanary control`, bound to o.
func bindControl(fs *flag.FlagSet, o *xds.Options) {
	fs.StringVar(&o.XDSListen, "xds-listen", o.XDSListen, "gRPC address Envoys dial for ADS")
	fs.StringVar(&o.APIListen, "api-listen", o.APIListen, "management API address")
	fs.StringVar(&o.DataDir, "data-dir", o.DataDir, "directory of the durable desired state (unused with --etcd-endpoints)")
	fs.Var(commaStrings{&config.Strings{P: &o.Etcd.Endpoints}}, "etcd-endpoints", "etcd client `URLs`, comma-separated or repeated, holding the desired state shared by control plane replicas instead of --data-dir")
	fs.StringVar(&o.Etcd.Prefix, "etcd-prefix", o.Etcd.Prefix, "prefix of the control plane's etcd keys (one per fleet)")
	fs.DurationVar((*time.Duration)(&o.Etcd.DialTimeout), "etcd-dial-timeout", o.Etcd.DialTimeout.D(), "bound on connecting to etcd and on each request")
	fs.StringVar(&o.Etcd.CA, "etcd-ca", o.Etcd.CA, "PEM CA certificates that verify etcd's server certificate (https endpoints; empty: the system's roots)")
	fs.StringVar(&o.Etcd.Cert, "etcd-cert", o.Etcd.Cert, "PEM client certificate presented to etcd")
	fs.StringVar(&o.Etcd.Key, "etcd-key", o.Etcd.Key, "PEM private key of --etcd-cert")
	fs.StringVar(&o.TokenFile, "token-file", o.TokenFile, "file holding the management API bearer token (default: $LLMCANARY_API_TOKEN)")
	fs.StringVar(&o.ListenerAddress, "listener-address", o.ListenerAddress, "address the Envoy listener binds")
	fs.Var(uint32Value{&o.ListenerPort}, "listener-port", "`port` of the Envoy listener serving the OpenAI API")
	fs.DurationVar((*time.Duration)(&o.StreamIdleTimeout), "stream-idle-timeout", o.StreamIdleTimeout.D(), "end a stream silent this long (no overall request timeout)")
	fs.Var(&config.OptionalSection[xds.WasmOptions]{P: &o.Wasm,
		SetMain: func(w *xds.WasmOptions, v string) { w.Path = v },
		Main:    func(w *xds.WasmOptions) string { return w.Path },
	}, "wasm", "`path` of the proxy-wasm filter module on the Envoy hosts; empty: no wasm filter (in --config also a mapping: path, hash_key_file, force_keys_file, identity, …)")
	fs.Var(&config.OptionalSection[xds.ExtProcOptions]{P: &o.ExtProc,
		SetMain: func(e *xds.ExtProcOptions, v string) { e.Address = v },
		Main:    func(e *xds.ExtProcOptions) string { return e.Address },
	}, "extproc", "`address` of the llmcanary extproc service; empty: no telemetry filter (in --config also a mapping: address, tls_dir, capture_request_body)")
	fs.Var(extprocField{o, func(e *xds.ExtProcOptions, v string) error { e.TLSDir = v; return nil }, false},
		"extproc-tls-dir", "`directory` on the Envoy hosts with the SDS files of Envoy's client certificate and CA (llmcanary certs): Envoy reaches --extproc over mTLS")
	fs.Var(extprocField{o, func(e *xds.ExtProcOptions, v string) (err error) {
		e.Measure.StableRatio, err = strconv.ParseFloat(v, 64)
		return err
	}, false}, "measure-stable-ratio", fmt.Sprintf("during a rollout, time a stable sample of users this many times the canaries' traffic (default %v)", xds.DefaultStableRatio))
	fs.Var(extprocField{o, func(e *xds.ExtProcOptions, v string) (err error) {
		e.Measure.StableMin, err = strconv.ParseFloat(v, 64)
		return err
	}, false}, "measure-stable-min", fmt.Sprintf("during a rollout, time at least this share of stable's users (default %v; negative: no minimum)", xds.DefaultStableMin))
	fs.Var(extprocField{o, func(e *xds.ExtProcOptions, v string) (err error) {
		e.Measure.Background, err = strconv.ParseFloat(v, 64)
		return err
	}, false}, "measure-background", fmt.Sprintf("without a rollout, time this share of users (default %v; negative: none)", xds.DefaultBackground))
	fs.Var(extprocField{o, func(e *xds.ExtProcOptions, v string) (err error) {
		e.Measure.All, err = strconv.ParseBool(v)
		return err
	}, true}, "measure-all", "time every request (the telemetry filter's full cost on all traffic)")
	bindServerTLS(fs, &o.TLS, true, "--xds-listen and --api-listen")
}

func runControl(ctx context.Context, args []string) error {
	o := xds.DefaultOptions()
	fs := newFlagSet("control", `Serves the desired state (models, versions, weights) to every Envoy over ADS
(state of the world and delta) and changes it through the management API
(HTTP/JSON, bearer token, see xds/openapi.yaml). The state is durable in
--data-dir: a restart resumes where it stood. With --etcd-endpoints the state
lives in etcd instead, shared by every replica on the same --etcd-prefix:
each serves xDS to its own Envoys and publishes a change made through any
of them; a replica that cannot reach etcd at start fails. The token is read from
--token-file, else the LLMCANARY_API_TOKEN environment variable. With
--tls-cert and --tls-key both ports serve TLS (the files are reread when they
change); --tls-client-ca makes the xDS port refuse any client without a
certificate from that CA: only the fleet's Envoys get or ACK configuration.`)
	if err := config.Parse(fs, args, func(fs *flag.FlagSet) { bindControl(fs, &o) }); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if o.Token == "" && o.TokenFile == "" {
		o.Token = os.Getenv("LLMCANARY_API_TOKEN")
	}
	o.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	cp, err := xds.Start(ctx, o)
	if err != nil {
		return err
	}
	<-cp.Done()
	return nil
}

// extprocField is a flag that sets one field of the telemetry filter's
// options (extproc in the config file), creating them: without an
// --extproc address they then fail validation with a clear error.
type extprocField struct {
	o       *xds.Options
	set     func(*xds.ExtProcOptions, string) error
	boolean bool
}

func (f extprocField) String() string { return "" }

func (f extprocField) Set(v string) error {
	if f.o.ExtProc == nil {
		f.o.ExtProc = &xds.ExtProcOptions{}
	}
	return f.set(f.o.ExtProc, v)
}

// IsBoolFlag lets --measure-all stand without a value.
func (f extprocField) IsBoolFlag() bool { return f.boolean }

// commaStrings is a repeatable flag whose values may also be given
// comma-separated, as etcdctl takes its endpoints.
type commaStrings struct{ *config.Strings }

// Set adds each comma-separated value.
func (c commaStrings) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if err := c.Strings.Set(strings.TrimSpace(p)); err != nil {
			return err
		}
	}
	return nil
}

// uint32Value is a uint32 flag.
type uint32Value struct{ p *uint32 }

func (v uint32Value) String() string {
	if v.p == nil {
		return "0"
	}
	return strconv.FormatUint(uint64(*v.p), 10)
}

func (v uint32Value) Set(s string) error {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return err
	}
	*v.p = uint32(n)
	return nil
}
