package xds

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/llmcanary/llmcanary/extproc/envoyconfig"
	"github.com/llmcanary/llmcanary/internal/mtls"
	"github.com/llmcanary/llmcanary/wasm/filterconfig"
)

// WasmOptions configure the proxy-wasm filter on the gateway: sticky
// buckets from identity, the model from the body, and force-version only
// with an operator key.
type WasmOptions struct {
	// Path of the filter module (bin/llmcanary-filter.wasm) on the Envoy hosts.
	Path string `json:"path"`
	// Identity sources in order; empty means filterconfig.DefaultIdentity
	// (the x-user-id header, then the body's "user").
	Identity []filterconfig.Source `json:"identity,omitempty"`
	// HashKey (or HashKeyFile) is the fleet-wide secret of the keyed hash
	// that turns an identity into a bucket. Changing it reshuffles every
	// user, so it is set once per fleet.
	HashKey     string `json:"hash_key,omitempty"`
	HashKeyFile string `json:"hash_key_file,omitempty"`
	// ForceKeysFile holds the operator keys accepted in x-llmcanary-key, one
	// per line. Only their SHA-256 digests reach Envoy. The file is watched:
	// add a key, let clients move over, remove the old one — no restart.
	ForceKeysFile string `json:"force_keys_file,omitempty"`
	// ForceKeyDigests are digests given directly (llmcanary forcekey).
	ForceKeyDigests []string `json:"force_key_digests,omitempty"`
	MaxBodyBytes    int      `json:"max_body_bytes,omitempty"`
	// CategoryHeader and CategoryHeaderTrusted: see filterconfig.Config.
	// Category overrides route only with CategoryHeaderTrusted.
	CategoryHeader        string `json:"category_header,omitempty"`
	CategoryHeaderTrusted bool   `json:"category_header_trusted,omitempty"`
	// CohortHeader, CohortHeaderTrusted and TenantHeader: see
	// filterconfig.Config. A model's cohorts name cohorts (opt-in by a
	// trusted hop's header) and tenants through them.
	CohortHeader        string `json:"cohort_header,omitempty"`
	CohortHeaderTrusted bool   `json:"cohort_header_trusted,omitempty"`
	TenantHeader        string `json:"tenant_header,omitempty"`
}

// ExtProcOptions configure the ext_proc telemetry filter on the gateway.
type ExtProcOptions struct {
	// Address of the llmcanary extproc gRPC service, a literal IP:port.
	Address string `json:"address"`
	// CaptureRequestBody streams request bodies to the service, needed for
	// sampled prompt capture (quality judging).
	CaptureRequestBody bool `json:"capture_request_body,omitempty"`
	// TLSDir is a directory on the Envoy hosts holding the SDS files of
	// Envoy's client certificate and the CA (`llmcanary certs` writes
	// them): Envoy then reaches the service, ext_proc and its access log
	// stream alike, over mTLS. Empty: plaintext, for development only —
	// anyone who reaches the service could then stream made-up timings.
	TLSDir string `json:"tls_dir,omitempty"`
	// Measure says which requests are timed; the zero value measures
	// every canary request, at least a fifth of stable's users during a
	// rollout (more when the canary is big), and 1 % of users otherwise
	// (see Measure).
	Measure Measure `json:"measure,omitempty"`
}

// Extensions builds the gateway's optional filters, wasm first so that the
// telemetry sees the bucket, model and force marker it sets.
func Extensions(w *WasmOptions, e *ExtProcOptions) ([]Extension, error) {
	var exts []Extension
	if w != nil {
		we, err := newWasmExtension(*w)
		if err != nil {
			return nil, err
		}
		exts = append(exts, we)
	}
	if e != nil {
		ee, err := newExtProcExtension(*e)
		if err != nil {
			return nil, err
		}
		exts = append(exts, ee)
	}
	return exts, nil
}

// wasmExtension is the proxy-wasm filter. Its force keys can change while
// the control plane runs (ReloadKeys); everything else is fixed.
type wasmExtension struct {
	o       WasmOptions
	hashKey string

	mu   sync.Mutex
	keys []string // digests
}

func newWasmExtension(o WasmOptions) (*wasmExtension, error) {
	if o.Path == "" {
		return nil, errors.New("wasm: path is required")
	}
	w := &wasmExtension{o: o, hashKey: o.HashKey}
	if o.HashKeyFile != "" {
		b, err := os.ReadFile(o.HashKeyFile)
		if err != nil {
			return nil, fmt.Errorf("wasm: hash key: %w", err)
		}
		w.hashKey = strings.TrimSpace(string(b))
	}
	if _, err := w.ReloadKeys(); err != nil {
		return nil, err
	}
	if err := w.config(nil).Validate(); err != nil {
		return nil, fmt.Errorf("wasm: %w", err)
	}
	return w, nil
}

func (w *wasmExtension) Name() string { return "wasm" }

func (w *wasmExtension) VerifiesForce() bool { return true }

func (w *wasmExtension) Clusters() []*clusterv3.Cluster { return nil }

// SetsSamplingKeys: the filter sets wire.HeaderSample and
// wire.HeaderBackground on every request it routes.
func (w *wasmExtension) SetsSamplingKeys() bool { return true }

// PerConnectionBufferLimit lets a whole request body up to the filter's cap
// be buffered; below it Envoy would answer 413 itself, without a JSON body.
func (w *wasmExtension) PerConnectionBufferLimit() uint32 {
	return uint32(w.config(nil).WithDefaults().MaxBodyBytes + 64<<10)
}

func (w *wasmExtension) config(s *State) filterconfig.Config {
	w.mu.Lock()
	keys := append([]string(nil), w.keys...)
	w.mu.Unlock()
	c := filterconfig.Config{
		Identity:              w.o.Identity,
		HashKey:               w.hashKey,
		ForceKeys:             keys,
		MaxBodyBytes:          w.o.MaxBodyBytes,
		CategoryHeader:        w.o.CategoryHeader,
		CategoryHeaderTrusted: w.o.CategoryHeaderTrusted,
		CohortHeader:          w.o.CohortHeader,
		CohortHeaderTrusted:   w.o.CohortHeaderTrusted,
		TenantHeader:          w.o.TenantHeader,
		Models:                []string{},
	}
	if s != nil {
		c.Models = s.ModelNames()
		c.Cohorts = s.filterCohorts()
	}
	return c
}

func (w *wasmExtension) HTTPFilter(s *State) (*hcmv3.HttpFilter, error) {
	return filterconfig.HTTPFilter(w.config(s), w.o.Path)
}

// ReloadKeys rereads the force keys file and reports whether the accepted
// keys changed.
func (w *wasmExtension) ReloadKeys() (bool, error) {
	keys := append([]string(nil), w.o.ForceKeyDigests...)
	if w.o.ForceKeysFile != "" {
		b, err := os.ReadFile(w.o.ForceKeysFile)
		if err != nil {
			return false, fmt.Errorf("wasm: force keys: %w", err)
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if k := strings.TrimSpace(sc.Text()); k != "" && !strings.HasPrefix(k, "#") {
				keys = append(keys, filterconfig.ForceKeyDigest(k))
			}
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	changed := strings.Join(keys, ",") != strings.Join(w.keys, ",")
	w.keys = keys
	return changed, nil
}

// extProcCluster names the cluster of the telemetry service.
const extProcCluster = "llmcanary_extproc"

type extProcExtension struct {
	o       ExtProcOptions
	cluster *clusterv3.Cluster
}

func newExtProcExtension(o ExtProcOptions) (*extProcExtension, error) {
	if o.Address == "" {
		return nil, errors.New("extproc: address is required")
	}
	if err := o.Measure.Validate(); err != nil {
		return nil, fmt.Errorf("extproc: %w", err)
	}
	c := envoyconfig.Cluster(extProcCluster, o.Address)
	if o.TLSDir != "" {
		ts, err := mtls.UpstreamTLS(o.TLSDir)
		if err != nil {
			return nil, fmt.Errorf("extproc: %w", err)
		}
		c.TransportSocket = ts
	}
	return &extProcExtension{o: o, cluster: c}, nil
}

func (e *extProcExtension) Name() string        { return "extproc" }
func (e *extProcExtension) VerifiesForce() bool { return false }

func (e *extProcExtension) HTTPFilter(*State) (*hcmv3.HttpFilter, error) {
	return envoyconfig.HTTPFilter(envoyconfig.FilterOptions{ClusterName: extProcCluster, CaptureRequestBody: e.o.CaptureRequestBody})
}

// ShadowFilters observe a version's mirrored requests from its shadow
// cluster and report them to the telemetry service as shadow answers.
func (e *extProcExtension) ShadowFilters(served envoyconfig.Served) ([]*hcmv3.HttpFilter, error) {
	f, err := envoyconfig.ShadowFilter(envoyconfig.FilterOptions{ClusterName: extProcCluster, StatPrefix: "shadow"}, served)
	if err != nil {
		return nil, err
	}
	return []*hcmv3.HttpFilter{f}, nil
}

// MeasurePolicy is the policy the routes apply.
func (e *extProcExtension) MeasurePolicy() Measure { return e.o.Measure }

// PerRoute switches the telemetry filter per route and weighted cluster.
func (e *extProcExtension) PerRoute(rate float64, served envoyconfig.Served, captureAll bool) (string, *anypb.Any, error) {
	cfg, err := envoyconfig.PerRoute(rate, served, captureAll)
	return envoyconfig.FilterName, cfg, err
}

// AccessLogs tells the telemetry service who cut off a request that ended
// early (client or upstream), which ext_proc alone cannot see.
func (e *extProcExtension) AccessLogs() ([]*accesslogv3.AccessLog, error) {
	al, err := envoyconfig.AccessLog(extProcCluster)
	if err != nil {
		return nil, err
	}
	return []*accesslogv3.AccessLog{al}, nil
}

func (e *extProcExtension) Clusters() []*clusterv3.Cluster {
	// A copy: each snapshot owns its resources.
	return []*clusterv3.Cluster{proto.Clone(e.cluster).(*clusterv3.Cluster)}
}

var (
	_ Measurer  = (*extProcExtension)(nil)
	_ KeySetter = (*wasmExtension)(nil)
)
