// Package kubernetes_test renders the kustomizations in deploy/kubernetes
// with kustomize's Go API and checks every object against the Kubernetes
// API types and the llmcanary binary. It lives in its own package so that
// kustomize and k8s.io/api stay out of the binary.
package kubernetes_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// image is the name the manifests give the llmcanary image.
const image = "llmcanary"

var kustomizations = []string{"base", "overlays/local"}

// objects is one rendered kustomization, decoded strictly.
type objects struct {
	deployments []*appsv1.Deployment
	services    []*corev1.Service
	configMaps  []*corev1.ConfigMap
	pdbs        []*policyv1.PodDisruptionBudget
	pvcs        []*corev1.PersistentVolumeClaim
}

// render builds the kustomization in dir and decodes every object into
// its Kubernetes API type, rejecting unknown fields.
func render(t *testing.T, dir string) objects {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var o objects
	for _, r := range rm.Resources() {
		b, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		id := r.GetKind() + "/" + r.GetName()
		var dst any
		switch r.GetKind() {
		case "Deployment":
			dst = add(&o.deployments)
		case "Service":
			dst = add(&o.services)
		case "ConfigMap":
			dst = add(&o.configMaps)
		case "PodDisruptionBudget":
			dst = add(&o.pdbs)
		case "PersistentVolumeClaim":
			dst = add(&o.pvcs)
		case "Secret":
			dst = &corev1.Secret{}
		case "Namespace":
			dst = &corev1.Namespace{}
		default:
			t.Errorf("%s: %s is a kind this test does not decode", dir, id)
			continue
		}
		if err := yaml.UnmarshalStrict(b, dst); err != nil {
			t.Errorf("%s: %s does not decode strictly into the Kubernetes API type: %v", dir, id, err)
		}
	}
	return o
}

// add appends a new object to list and returns it to decode into.
func add[T any](list *[]*T) *T {
	v := new(T)
	*list = append(*list, v)
	return v
}

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "llmcanary-k8s-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "llmcanary")
	out, err := exec.Command("go", "build", "-o", binary, "github.com/llmcanary/llmcanary/cmd/llmcanary").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build llmcanary: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var flagLine = regexp.MustCompile(`(?m)^\s+--?([a-z0-9][a-z0-9-]*)`)

// flagsOf returns the flags `llmcanary <sub> -h` lists.
func flagsOf(t *testing.T, sub string) map[string]bool {
	t.Helper()
	out, _ := exec.Command(binary, sub, "-h").CombinedOutput()
	flags := map[string]bool{}
	for _, m := range flagLine.FindAllStringSubmatch(string(out), -1) {
		flags[m[1]] = true
	}
	if len(flags) == 0 {
		t.Fatalf("llmcanary %s -h lists no flags:\n%s", sub, out)
	}
	return flags
}

// commandArgs returns the llmcanary subcommand and arguments a container
// runs: its args, or the llmcanary command inside a /bin/sh -c script.
func commandArgs(c corev1.Container) (sub string, args []string) {
	all := append(append([]string(nil), c.Command...), c.Args...)
	if len(all) >= 3 && all[0] == "/bin/sh" && all[1] == "-c" {
		script := all[2]
		if i := strings.IndexAny(script, ">&;|"); i >= 0 {
			script = script[:i]
		}
		f := strings.Fields(script)
		if len(f) < 2 || f[0] != "llmcanary" {
			return "", nil
		}
		return f[1], f[2:]
	}
	if len(c.Command) > 0 || len(c.Args) == 0 {
		return "", nil
	}
	return c.Args[0], c.Args[1:]
}

// TestKustomizationsDecodeStrictly renders every kustomization; render
// fails the test on any object that is not a valid API object.
func TestKustomizationsDecodeStrictly(t *testing.T) {
	for _, dir := range kustomizations {
		o := render(t, dir)
		if len(o.deployments) < 4 || len(o.services) < 4 || len(o.pdbs) < 4 {
			t.Errorf("%s renders %d deployments, %d services, %d PDBs; want control, extproc, analyzer and envoy each", dir, len(o.deployments), len(o.services), len(o.pdbs))
		}
	}
}

// TestManifestsMatchTheBinary checks, for every container that runs
// llmcanary: each flag is one the subcommand accepts; the --config file is
// in the mounted ConfigMap and its keys are the subcommand's flags; every
// listen address's port is a container port and every container port is
// listened on; probes ask /healthz and /readyz on a port the service
// serves them on, over HTTPS where it serves TLS; the files it names are
// under a mount.
func TestManifestsMatchTheBinary(t *testing.T) {
	for _, dir := range kustomizations {
		o := render(t, dir)
		cms := map[string]*corev1.ConfigMap{}
		for _, c := range o.configMaps {
			cms[c.Name] = c
		}
		ran := map[string]bool{}
		for _, d := range o.deployments {
			spec := d.Spec.Template.Spec
			for _, c := range append(append([]corev1.Container(nil), spec.InitContainers...), spec.Containers...) {
				if c.Image != image && !strings.HasPrefix(c.Image, image+":") {
					continue
				}
				sub, args := commandArgs(c)
				where := fmt.Sprintf("%s: %s/%s", dir, d.Name, c.Name)
				if sub == "" {
					t.Errorf("%s runs the llmcanary image without a subcommand", where)
					continue
				}
				ran[sub] = true
				flags := flagsOf(t, sub)
				configPath := ""
				for i, a := range args {
					if !strings.HasPrefix(a, "-") {
						continue
					}
					name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
					if !flags[name] {
						t.Errorf("%s: llmcanary %s has no flag --%s", where, sub, name)
					}
					if name == "config" && i+1 < len(args) {
						configPath = args[i+1]
					}
				}
				if sub == "bootstrap" {
					continue
				}
				if configPath == "" {
					t.Errorf("%s: llmcanary %s without --config", where, sub)
					continue
				}
				cfg := mountedConfig(t, where, configPath, c, spec.Volumes, cms)
				if cfg == nil {
					continue
				}
				checkConfig(t, where, sub, cfg, flags, c)
			}
		}
		for _, sub := range []string{"control", "extproc", "analyzer", "bootstrap"} {
			if !ran[sub] {
				t.Errorf("%s: no container runs llmcanary %s", dir, sub)
			}
		}
	}
}

// mountedConfig returns the parsed config file at path, which must be a
// key of a ConfigMap mounted in c.
func mountedConfig(t *testing.T, where, path string, c corev1.Container, vols []corev1.Volume, cms map[string]*corev1.ConfigMap) map[string]any {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if filepath.Dir(path) != filepath.Clean(m.MountPath) {
			continue
		}
		for _, v := range vols {
			if v.Name != m.Name || v.ConfigMap == nil {
				continue
			}
			cm, ok := cms[v.ConfigMap.Name]
			if !ok {
				t.Errorf("%s mounts ConfigMap %s, which the kustomization does not make", where, v.ConfigMap.Name)
				return nil
			}
			text, ok := cm.Data[filepath.Base(path)]
			if !ok {
				t.Errorf("%s: --config %s: ConfigMap %s has no key %s", where, path, cm.Name, filepath.Base(path))
				return nil
			}
			var cfg map[string]any
			if err := yaml.Unmarshal([]byte(text), &cfg); err != nil {
				t.Errorf("%s: %s: %v", where, path, err)
				return nil
			}
			return cfg
		}
	}
	t.Errorf("%s: --config %s is not in a mounted ConfigMap", where, path)
	return nil
}

func checkConfig(t *testing.T, where, sub string, cfg map[string]any, flags map[string]bool, c corev1.Container) {
	t.Helper()
	// Keys are flags, or prefixes of flags (tls: {cert: …} is tls-cert).
	for k, v := range cfg {
		k = strings.ReplaceAll(k, "_", "-")
		if flags[k] {
			continue
		}
		sec, ok := v.(map[string]any)
		if !ok {
			t.Errorf("%s: config key %q is not a flag of llmcanary %s", where, k, sub)
			continue
		}
		for sk := range sec {
			if name := k + "-" + strings.ReplaceAll(sk, "_", "-"); !flags[name] {
				t.Errorf("%s: config key %s.%s is not a flag of llmcanary %s (--%s)", where, k, sk, sub, name)
			}
		}
	}
	// Ports: every *listen address is a container port, and back.
	ports := map[int32]string{} // container port -> listen key
	byName := map[string]int32{}
	for _, p := range c.Ports {
		byName[p.Name] = p.ContainerPort
	}
	for k, v := range cfg {
		if !strings.HasSuffix(k, "listen") || strings.HasPrefix(k, "listener") {
			continue
		}
		_, port, err := net.SplitHostPort(fmt.Sprint(v))
		if err != nil {
			t.Errorf("%s: %s %v: %v", where, k, v, err)
			continue
		}
		var n int32
		fmt.Sscan(port, &n)
		found := false
		for _, p := range c.Ports {
			found = found || p.ContainerPort == n
		}
		if !found {
			t.Errorf("%s: %s is %v but the container declares no port %d", where, k, v, n)
		}
		ports[n] = k
	}
	for _, p := range c.Ports {
		if _, ok := ports[p.ContainerPort]; !ok {
			t.Errorf("%s: container port %s (%d) is no listen address of the config", where, p.Name, p.ContainerPort)
		}
	}
	// Probes: /healthz for liveness, /readyz for readiness, on the HTTP
	// port (the API, or the telemetry's metrics), HTTPS when it serves TLS.
	_, tls := cfg["tls"]
	httpKey := map[string]string{"control": "api-listen", "analyzer": "listen", "extproc": "metrics-listen"}[sub]
	wantScheme := corev1.URISchemeHTTP
	if tls && sub != "extproc" { // extproc's TLS is on its gRPC port only
		wantScheme = corev1.URISchemeHTTPS
	}
	for _, pr := range []struct {
		kind, path string
		probe      *corev1.Probe
	}{{"liveness", "/healthz", c.LivenessProbe}, {"readiness", "/readyz", c.ReadinessProbe}} {
		if pr.probe == nil || pr.probe.HTTPGet == nil {
			t.Errorf("%s: no HTTP %s probe", where, pr.kind)
			continue
		}
		g := *pr.probe.HTTPGet
		if g.Scheme == "" {
			g.Scheme = corev1.URISchemeHTTP // the API server's default
		}
		n := g.Port.IntVal
		if g.Port.StrVal != "" {
			n = byName[g.Port.StrVal]
		}
		if g.Path != pr.path || ports[n] != httpKey || g.Scheme != wantScheme {
			t.Errorf("%s: %s probe %s %s on port %v (%s); want %s %s on the %s port", where, pr.kind, g.Scheme, g.Path, g.Port.String(), ports[n], wantScheme, pr.path, httpKey)
		}
	}
	// Files and directories named by the config lie under a mount.
	for _, p := range paths(cfg) {
		mounted := false
		for _, m := range c.VolumeMounts {
			mounted = mounted || strings.HasPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/") || p == m.MountPath
		}
		if !mounted && sub != "control" { // control's wasm and extproc paths are in the Envoy pods
			t.Errorf("%s: %s is under no volume mount", where, p)
		}
	}
}

// paths returns every absolute path among the config's values.
func paths(v any) []string {
	switch v := v.(type) {
	case string:
		if strings.HasPrefix(v, "/") {
			return []string{v}
		}
	case map[string]any:
		var out []string
		for _, x := range v {
			out = append(out, paths(x)...)
		}
		return out
	case []any:
		var out []string
		for _, x := range v {
			out = append(out, paths(x)...)
		}
		return out
	}
	return nil
}

// TestServicesAndBudgetsSelectPods checks that every Service and PDB
// selects a Deployment's pods, and a Service's target ports are ports of
// those pods.
func TestServicesAndBudgetsSelectPods(t *testing.T) {
	for _, dir := range kustomizations {
		o := render(t, dir)
		selects := func(sel map[string]string) *appsv1.Deployment {
			for _, d := range o.deployments {
				match := len(sel) > 0
				for k, v := range sel {
					match = match && d.Spec.Template.Labels[k] == v
				}
				if match {
					return d
				}
			}
			return nil
		}
		for _, s := range o.services {
			d := selects(s.Spec.Selector)
			if d == nil {
				t.Errorf("%s: Service %s selects no Deployment's pods", dir, s.Name)
				continue
			}
			for _, p := range s.Spec.Ports {
				found := false
				for _, c := range d.Spec.Template.Spec.Containers {
					for _, cp := range c.Ports {
						found = found || cp.Name == p.TargetPort.StrVal || cp.ContainerPort == p.TargetPort.IntVal
					}
				}
				if !found {
					t.Errorf("%s: Service %s port %s targets %s, no port of %s", dir, s.Name, p.Name, p.TargetPort.String(), d.Name)
				}
			}
		}
		for _, p := range o.pdbs {
			if p.Spec.Selector == nil || selects(p.Spec.Selector.MatchLabels) == nil {
				t.Errorf("%s: PodDisruptionBudget %s selects no Deployment's pods", dir, p.Name)
			}
		}
		for _, d := range o.deployments {
			for _, c := range d.Spec.Template.Spec.Containers {
				if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
					t.Errorf("%s: %s/%s requests no CPU or memory", dir, d.Name, c.Name)
				}
			}
		}
	}
}
