package xds

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/out")

// goldenInput is one file of testdata/in: a desired state and the gateway
// options it is translated with.
type goldenInput struct {
	Gateway gatewayInput `json:"gateway"`
	State   State        `json:"state"`
}

type gatewayInput struct {
	ListenerPort uint32          `json:"listener_port"`
	Wasm         *WasmOptions    `json:"wasm,omitempty"`
	ExtProc      *ExtProcOptions `json:"extproc,omitempty"`
}

func TestTranslateGolden(t *testing.T) {
	ins, err := filepath.Glob("testdata/in/*.yaml")
	if err != nil || len(ins) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	for _, in := range ins {
		name := strings.TrimSuffix(filepath.Base(in), ".yaml")
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			var gi goldenInput
			if err := yaml.UnmarshalStrict(raw, &gi); err != nil {
				t.Fatalf("parse %s: %v", in, err)
			}
			g := DefaultGateway()
			if gi.Gateway.ListenerPort != 0 {
				g.ListenerPort = gi.Gateway.ListenerPort
			}
			g.Extensions, err = Extensions(gi.Gateway.Wasm, gi.Gateway.ExtProc)
			if err != nil {
				t.Fatal(err)
			}
			res, err := Translate(&gi.State, g)
			if err != nil {
				t.Fatalf("translate: %v", err)
			}
			snap, err := snapshotOf(&gi.State, res, "1")
			if err != nil {
				t.Fatalf("snapshot: %v", err)
			}
			if err := snap.Consistent(); err != nil {
				t.Fatalf("snapshot not consistent: %v", err)
			}
			compareGolden(t, name+".listeners.yaml", res.Listeners)
			compareGolden(t, name+".routes.yaml", res.Routes)
			compareGolden(t, name+".clusters.yaml", res.Clusters)
			compareGolden(t, name+".endpoints.yaml", res.Endpoints)
		})
	}
}

func compareGolden[M proto.Message](t *testing.T, file string, msgs []M) {
	t.Helper()
	var buf bytes.Buffer
	for i, m := range msgs {
		j, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		y, err := yaml.JSONToYAML(j)
		if err != nil {
			t.Fatalf("to yaml: %v", err)
		}
		if i > 0 {
			buf.WriteString("---\n")
		}
		buf.Write(y)
	}
	path := filepath.Join("testdata", "out", file)
	if *update {
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run go test ./xds -run TestTranslateGolden -update): %v", err)
	}
	if !bytes.Equal(want, buf.Bytes()) {
		t.Errorf("%s differs from the translation; review the diff and run with -update if intended\n--- got ---\n%s", path, buf.String())
	}
}
