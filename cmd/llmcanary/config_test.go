package main

import (
	"flag"
	"io"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/analyzer/analyzersvc"
	"github.com/llmcanary/llmcanary/extproc/extprocsvc"
	"github.com/llmcanary/llmcanary/internal/config"
	"github.com/llmcanary/llmcanary/xds"
)

// service is one long-running subcommand as its config file sees it.
type service struct {
	name    string
	options any // a pointer to the service's Options
	bind    func(fs *flag.FlagSet)
}

func services() []service {
	cp, ep, an := xds.DefaultOptions(), extprocsvc.Defaults(), analyzersvc.Defaults()
	return []service{
		{"control", &cp, func(fs *flag.FlagSet) { bindControl(fs, &cp) }},
		{"extproc", &ep, func(fs *flag.FlagSet) { bindExtproc(fs, &ep) }},
		{"analyzer", &an, func(fs *flag.FlagSet) { bindAnalyzer(fs, &an) }},
	}
}

func flagSetOf(s service) *flag.FlagSet {
	fs := flag.NewFlagSet(s.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	s.bind(fs)
	return fs
}

// docSections splits docs/configuration.md by service heading.
func docSections(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	parts := regexp.MustCompile("(?m)^## `llmcanary (\\w+)`").Split(string(b), -1)
	names := regexp.MustCompile("(?m)^## `llmcanary (\\w+)`").FindAllStringSubmatch(string(b), -1)
	for i, n := range names {
		out[n[1]] = parts[i+1]
	}
	return out
}

func TestConfigurationDocListsEveryFlagOfEveryService(t *testing.T) {
	docs := docSections(t)
	for _, s := range services() {
		t.Run(s.name, func(t *testing.T) {
			doc, ok := docs[s.name]
			if !ok {
				t.Fatalf("docs/configuration.md has no section for llmcanary %s", s.name)
			}
			flagSetOf(s).VisitAll(func(f *flag.Flag) {
				if !strings.Contains(doc, "`"+f.Name+"`") {
					t.Errorf("flag --%s is not documented in docs/configuration.md", f.Name)
				}
			})
		})
	}
}

// The Options' JSON names are the config keys: each names a flag, or (a
// nested struct such as tls) the prefix of flags.
func TestEveryOptionsKeyIsAFlag(t *testing.T) {
	for _, s := range services() {
		t.Run(s.name, func(t *testing.T) {
			fs := flagSetOf(s)
			typ := reflect.TypeOf(s.options).Elem()
			for i := range typ.NumField() {
				f := typ.Field(i)
				key, _, _ := strings.Cut(f.Tag.Get("json"), ",")
				if key == "-" {
					continue
				}
				if key == "" {
					t.Errorf("field %s has no JSON name", f.Name)
					continue
				}
				if fs.Lookup(key) != nil {
					continue
				}
				prefixed := false
				fs.VisitAll(func(fl *flag.Flag) { prefixed = prefixed || strings.HasPrefix(fl.Name, key+"-") })
				if !prefixed || f.Type.Kind() != reflect.Struct {
					t.Errorf("field %s has the key %q, which is not a flag of llmcanary %s", f.Name, key, s.name)
				}
			}
		})
	}
}

func TestConfigurationDocExamplesLoad(t *testing.T) {
	docs := docSections(t)
	yamlBlock := regexp.MustCompile("(?s)```yaml\n(.*?)```")
	for _, s := range services() {
		t.Run(s.name, func(t *testing.T) {
			m := yamlBlock.FindStringSubmatch(docs[s.name])
			if m == nil {
				t.Fatalf("no example for %s", s.name)
			}
			if err := config.Apply(flagSetOf(s), []byte(m[1])); err != nil {
				t.Fatalf("the documented example does not load: %v", err)
			}
		})
	}
}

// A control plane config file as deploy/README.md wrote it before the
// keys were the flag names (xds_listen, nested tls) still loads.
func TestControlConfigWithUnderscoresAndNestedTLSLoads(t *testing.T) {
	o := xds.DefaultOptions()
	fs := controlFlags(&o)
	err := config.Apply(fs, []byte(`
xds_listen: 0.0.0.0:18000
api_listen: 0.0.0.0:18080
data_dir: /var/lib/llmcanary/control
token_file: /etc/llmcanary/api-token
tls:
  cert: /etc/llmcanary/tls/server.pem
  key: /etc/llmcanary/tls/server-key.pem
  client_ca: /etc/llmcanary/tls/ca.pem
listener_address: 0.0.0.0
listener_port: 10001
stream_idle_timeout: 5m
wasm:
  path: /opt/llmcanary/llmcanary-filter.wasm
  hash_key_file: /etc/llmcanary/hash-key
  identity: [{header: x-user-id}, {body_field: user}]
extproc:
  address: 127.0.0.1:9002
  tls_dir: /etc/llmcanary/tls
`))
	if err != nil {
		t.Fatal(err)
	}
	if o.XDSListen != "0.0.0.0:18000" || o.ListenerPort != 10001 || o.TLS.ClientCA != "/etc/llmcanary/tls/ca.pem" ||
		o.Wasm == nil || o.Wasm.HashKeyFile != "/etc/llmcanary/hash-key" || len(o.Wasm.Identity) != 2 ||
		o.ExtProc == nil || o.ExtProc.TLSDir != "/etc/llmcanary/tls" || o.StreamIdleTimeout.D().String() != "5m0s" {
		t.Fatalf("options %+v (wasm %+v, extproc %+v)", o, o.Wasm, o.ExtProc)
	}
}

// Every service refuses to start on a config file with an unknown key,
// and says which.
func TestEveryServiceRejectsAnUnknownConfigKey(t *testing.T) {
	path := t.TempDir() + "/bad.yaml"
	if err := os.WriteFile(path, []byte("listen_adress: 127.0.0.1:1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"control", "extproc", "analyzer"} {
		t.Run(name, func(t *testing.T) {
			err := commands[name].Run(t.Context(), []string{"--config", path})
			if err == nil || !strings.Contains(err.Error(), `unknown key "listen_adress"`) || !strings.Contains(err.Error(), path) {
				t.Fatalf("error %v, want the unknown key and the file named", err)
			}
		})
	}
}

// A flag on the command line wins over the file, the file over the
// default; the file is read for every service the same way.
func TestCommandLineOverridesTheConfigFile(t *testing.T) {
	path := t.TempDir() + "/extproc.yaml"
	if err := os.WriteFile(path, []byte("listen: 127.0.0.1:1\nretention-days: 7\nlog-level: warn\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o := extprocsvc.Defaults()
	fs := newFlagSet("extproc", "")
	fs.SetOutput(io.Discard)
	if err := config.Parse(fs, []string{"--config", path, "--retention-days", "30"}, func(fs *flag.FlagSet) { bindExtproc(fs, &o) }); err != nil {
		t.Fatal(err)
	}
	if o.Listen != "127.0.0.1:1" || o.RetentionDays != 30 || o.LogLevel != "warn" || o.MetricsListen != "127.0.0.1:9003" {
		t.Fatalf("options %+v", o)
	}
}

// The replicas' etcd settings load as a mapping (as deploy/README.md
// writes them) and as flags; the state then needs no data directory.
func TestControlConfigWithAnEtcdMappingLoads(t *testing.T) {
	o := xds.DefaultOptions()
	fs := controlFlags(&o)
	err := config.Apply(fs, []byte(`
data-dir: ""
token-file: /etc/llmcanary/api-token
etcd:
  endpoints: [https://etcd-1.internal:2379, https://etcd-2.internal:2379]
  prefix: /llmcanary/prod/
  dial-timeout: 2s
  ca: /etc/llmcanary/etcd/ca.pem
  cert: /etc/llmcanary/etcd/client.pem
  key: /etc/llmcanary/etcd/client-key.pem
`))
	if err != nil {
		t.Fatal(err)
	}
	want := xds.EtcdOptions{Endpoints: []string{"https://etcd-1.internal:2379", "https://etcd-2.internal:2379"}, Prefix: "/llmcanary/prod/",
		DialTimeout: config.Duration(2 * time.Second), CA: "/etc/llmcanary/etcd/ca.pem", Cert: "/etc/llmcanary/etcd/client.pem", Key: "/etc/llmcanary/etcd/client-key.pem"}
	if !reflect.DeepEqual(o.Etcd, want) {
		t.Fatalf("etcd options %+v, want %+v", o.Etcd, want)
	}
	if err := o.Validate(); err != nil {
		t.Fatalf("replica options without a data directory: %v", err)
	}
}

func TestEtcdEndpointsFlagTakesACommaSeparatedListOrRepeats(t *testing.T) {
	for _, args := range [][]string{
		{"--etcd-endpoints", "http://a:2379,http://b:2379"},
		{"--etcd-endpoints", "http://a:2379", "--etcd-endpoints", "http://b:2379"},
	} {
		o := xds.DefaultOptions()
		fs := controlFlags(&o)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		if want := []string{"http://a:2379", "http://b:2379"}; !reflect.DeepEqual(o.Etcd.Endpoints, want) {
			t.Errorf("%v: endpoints %q, want %q", args, o.Etcd.Endpoints, want)
		}
	}
}

// controlFlags returns the flags of llmcanary control bound to o.
func controlFlags(o *xds.Options) *flag.FlagSet {
	fs := flag.NewFlagSet("control", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	bindControl(fs, o)
	return fs
}
