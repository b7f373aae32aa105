package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/llmcanary/llmcanary/internal/mtls"
	"github.com/llmcanary/llmcanary/xds"
)

func init() {
	register(command{
		Name:    "control",
		Summary: "run the control plane: xDS server for the Envoy fleet and the management API",
		Run:     runControl,
	})
}

func runControl(ctx context.Context, args []string) error {
	o := xds.DefaultOptions()
	fs := newFlagSet("control", `Serves the desired state (models, versions, weights) to every Envoy over ADS
(state of the world and delta) and changes it through the management API
(HTTP/JSON, bearer token, see xds/openapi.yaml). The state is durable in
--data-dir: a restart resumes where it stood. The token is read from
--token-file, else the LLMCANARY_API_TOKEN environment variable. With
--tls-cert and --tls-key both ports serve TLS (the files are reread when they
change); --tls-client-ca makes the xDS port refuse any client without a
certificate from that CA: only the fleet's Envoys get or ACK configuration.`)
	configFile := fs.String("config", "", "YAML config file (same field names as the flags, e.g. xds_listen); flags override it")
	xdsListen := fs.String("xds-listen", o.XDSListen, "gRPC address Envoys dial for ADS")
	apiListen := fs.String("api-listen", o.APIListen, "management API address")
	dataDir := fs.String("data-dir", o.DataDir, "directory of the durable desired state")
	tokenFile := fs.String("token-file", "", "file holding the management API bearer token")
	listenerAddr := fs.String("listener-address", o.ListenerAddress, "address the Envoy listener binds")
	listenerPort := fs.Uint("listener-port", uint(o.ListenerPort), "port of the Envoy listener serving the OpenAI API")
	idle := o.StreamIdleTimeout
	fs.Var(&idle, "stream-idle-timeout", "end a stream silent this long (no overall request timeout)")
	wasmPath := fs.String("wasm", "", "path of the proxy-wasm filter module on the Envoy hosts; empty: no wasm filter")
	extprocAddr := fs.String("extproc", "", "address of the llmcanary extproc service; empty: no telemetry filter")
	extprocTLSDir := fs.String("extproc-tls-dir", "", "directory on the Envoy hosts with the SDS files of Envoy's client certificate and CA (llmcanary certs): Envoy reaches --extproc over mTLS")
	measureRatio := fs.Float64("measure-stable-ratio", 0, fmt.Sprintf("during a rollout, time a stable sample of users this many times the canaries' traffic (default %v)", xds.DefaultStableRatio))
	measureMin := fs.Float64("measure-stable-min", 0, fmt.Sprintf("during a rollout, time at least this share of stable's users (default %v; negative: no minimum)", xds.DefaultStableMin))
	measureBackground := fs.Float64("measure-background", 0, fmt.Sprintf("without a rollout, time this share of users (default %v; negative: none)", xds.DefaultBackground))
	measureAll := fs.Bool("measure-all", false, "time every request (the telemetry filter's full cost on all traffic)")
	var tlsFiles mtls.ServerFiles
	bindServerTLS(fs, &tlsFiles, true, "--xds-listen and --api-listen")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *configFile != "" {
		if err := xds.LoadOptionsFile(*configFile, &o); err != nil {
			return err
		}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["xds-listen"] || *configFile == "" {
		o.XDSListen = *xdsListen
	}
	if set["api-listen"] || *configFile == "" {
		o.APIListen = *apiListen
	}
	if set["data-dir"] || *configFile == "" {
		o.DataDir = *dataDir
	}
	if set["listener-address"] || *configFile == "" {
		o.ListenerAddress = *listenerAddr
	}
	if set["listener-port"] || *configFile == "" {
		o.ListenerPort = uint32(*listenerPort)
	}
	if set["stream-idle-timeout"] || *configFile == "" {
		o.StreamIdleTimeout = idle
	}
	if *tokenFile != "" {
		o.TokenFile = *tokenFile
	}
	if o.Token == "" && o.TokenFile == "" {
		o.Token = os.Getenv("LLMCANARY_API_TOKEN")
	}
	if *wasmPath != "" {
		o.Wasm = &xds.WasmOptions{Path: *wasmPath}
	}
	if *extprocAddr != "" {
		o.ExtProc = &xds.ExtProcOptions{Address: *extprocAddr, TLSDir: *extprocTLSDir}
	} else if *extprocTLSDir != "" {
		if o.ExtProc == nil {
			return errors.New("--extproc-tls-dir needs --extproc (or extproc.address in --config)")
		}
		o.ExtProc.TLSDir = *extprocTLSDir
	}
	if o.ExtProc != nil {
		if set["measure-stable-ratio"] {
			o.ExtProc.Measure.StableRatio = *measureRatio
		}
		if set["measure-stable-min"] {
			o.ExtProc.Measure.StableMin = *measureMin
		}
		if set["measure-background"] {
			o.ExtProc.Measure.Background = *measureBackground
		}
		if set["measure-all"] {
			o.ExtProc.Measure.All = *measureAll
		}
	}
	// The TLS flags override the config file's tls one by one.
	for _, f := range []struct{ flag, dst *string }{{&tlsFiles.Cert, &o.TLS.Cert}, {&tlsFiles.Key, &o.TLS.Key}, {&tlsFiles.ClientCA, &o.TLS.ClientCA}} {
		if *f.flag != "" {
			*f.dst = *f.flag
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	cp, err := xds.Start(ctx, o, log)
	if err != nil {
		return err
	}
	<-cp.Done()
	return nil
}
