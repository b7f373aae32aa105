// Package xds is llmcanary's control plane: the desired state (models, their
// versions and the traffic weights between them), its validation and durable
// storage, the pure translation into Envoy resources, the xDS server that
// publishes them to every Envoy, and the management API that changes them.
package xds

import (
	"errors"
	"fmt"
	"math"
	"net"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// TotalWeight is the fixed sum of a model's cluster weights in Envoy. Weights
// are published in basis points so that a route's total never changes while a
// rollout moves traffic: with clusters in a fixed order (stable first) and
// Envoy picking `bucket % TotalWeight`, a bucket that is in the canary at 5%
// is still in it at 10% (monotone stickiness).
const TotalWeight = 10000

// Errors the management API maps to status codes.
var (
	ErrInvalid         = errors.New("invalid")
	ErrNotFound        = errors.New("not found")
	ErrConflict        = errors.New("conflict")
	ErrRevisionChanged = errors.New("revision changed")
	// ErrUnavailable: the store could not be reached (etcd away). A write
	// that failed so may still have been applied: read the revision before
	// retrying.
	ErrUnavailable = errors.New("store unavailable")
)

// State is the desired state of the fleet. It is what the management API
// changes, what the store persists, and the only input of Translate besides
// the gateway's static options.
type State struct {
	// Revision increases by one with every accepted change; it is the xDS
	// snapshot version.
	Revision uint64 `json:"revision"`
	// Models by name.
	Models map[string]*Model `json:"models"`
}

// Model is one served model name (the request body's "model") and the
// versions behind it.
type Model struct {
	Name string `json:"name"`
	// Stable is the version that receives the traffic no canary takes. It is
	// listed first in the route, so canary buckets are the top of the range.
	Stable string `json:"stable"`
	// Versions in the order they were added; canaries keep this order.
	Versions []Version `json:"versions"`
	// Weights in percent per version name, summing to exactly 100, with at
	// most two decimals (basis points). Versions without an entry get 0.
	Weights map[string]float64 `json:"weights"`
	// CategoryOverrides send every request of a category (the
	// x-llmcanary-category header) to one version, e.g. {"code": "v2"}.
	CategoryOverrides map[string]string `json:"category_overrides,omitempty"`
	// Cohorts are the users routed to the canary at any canary weight
	// above 0 (opt-in) and those never routed to a canary (excluded).
	Cohorts *Cohorts `json:"cohorts,omitempty"`
	// RequestRateRPS is the model's declared request rate (requests per
	// second over all versions). The planner checks each stage's share of
	// it against the canary pool's capacity when no rate is observed.
	RequestRateRPS float64 `json:"request_rate_rps,omitempty"`
	// History lists every version that was stable, oldest first: when and
	// why the stable version changed. The control plane writes it; it is
	// ignored on input (a model replaced by PUT keeps its history).
	History []StableChange `json:"history,omitempty"`
	// Shadow, when set, mirrors a share of the model's user traffic to one
	// version whose answers are recorded and never returned (see Shadow).
	Shadow *Shadow `json:"shadow,omitempty"`
	// Lanes, while several canaries share the traffic (an A/B/n
	// experiment), fix each one's part of the bucket range, so that no
	// arm's users move when another arm's weight changes or it is dropped
	// (see Layout). The control plane keeps them; they are ignored on
	// input.
	Lanes []Lane `json:"lanes,omitempty"`
	// Sampling is how the model's traffic is measured under its current
	// weights (see Measure). The management API sets it in its answers;
	// it is ignored on input and never stored.
	Sampling *Sampling `json:"sampling,omitempty"`
}

// Version is one deployment of a model: an inference pool and what is known
// about the checkpoint it serves.
type Version struct {
	Name string `json:"name"`
	// Endpoints are host:port addresses of the pool's servers. IP addresses
	// are published through EDS; host names are resolved by Envoy (STRICT_DNS).
	Endpoints []string        `json:"endpoints"`
	Metadata  VersionMetadata `json:"metadata"`
	// HealthPath is polled by Envoy's active health check ("/health" for
	// vLLM and TGI). Empty disables active health checking.
	HealthPath *string `json:"health_path,omitempty"`
}

// VersionMetadata describes the checkpoint behind a version. The analyzer's
// planner grades a change's risk from it; the prices turn tokens into cost.
type VersionMetadata struct {
	BaseModel        string  `json:"base_model,omitempty"`
	Family           string  `json:"family,omitempty"`
	ParametersB      float64 `json:"parameters_b,omitempty"`
	WeightsHash      string  `json:"weights_hash,omitempty"`
	ConfigHash       string  `json:"config_hash,omitempty"`
	GPUMemoryGB      float64 `json:"gpu_memory_gb,omitempty"`
	PriceInputPer1K  float64 `json:"price_input_per_1k,omitempty"`
	PriceOutputPer1K float64 `json:"price_output_per_1k,omitempty"`
	Description      string  `json:"description,omitempty"`
	// The pool's size and price: Replicas servers of GPUsPerReplica GPUs
	// each, PricePerGPUHour per GPU. With them the plan states what
	// running this version beside stable costs for the rollout.
	Replicas        int     `json:"replicas,omitempty"`
	GPUsPerReplica  int     `json:"gpus_per_replica,omitempty"`
	PricePerGPUHour float64 `json:"price_per_gpu_hour,omitempty"`
	// CapacityRPS is the requests per second the whole pool can serve;
	// the plan warns of a stage that would send it more.
	CapacityRPS float64 `json:"capacity_rps,omitempty"`
}

// DefaultHealthPath is the health endpoint of vLLM and TGI.
const DefaultHealthPath = "/health"

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$`)

// Version returns the named version and whether it exists.
func (m *Model) Version(name string) (Version, bool) {
	for _, v := range m.Versions {
		if v.Name == name {
			return v, true
		}
	}
	return Version{}, false
}

// Ordered returns the versions as the route lists them: the stable version
// first, then the others in the order they were added.
func (m *Model) Ordered() []Version {
	out := make([]Version, 0, len(m.Versions))
	for _, v := range m.Versions {
		if v.Name == m.Stable {
			out = append(out, v)
		}
	}
	for _, v := range m.Versions {
		if v.Name != m.Stable {
			out = append(out, v)
		}
	}
	return out
}

// BasisPoints converts a model's percent weights to integer weights that sum
// to TotalWeight, in Ordered order (where each version's part of the
// bucket range lies is Layout's). Validate guarantees the conversion is
// exact; nothing is renormalised here.
func (m *Model) BasisPoints() []uint32 {
	vs := m.Ordered()
	out := make([]uint32, len(vs))
	for i, v := range vs {
		out[i] = m.bps(v.Name)
	}
	return out
}

// HealthPathOrDefault returns the health check path, "" when disabled.
func (v Version) HealthPathOrDefault() string {
	if v.HealthPath == nil {
		return DefaultHealthPath
	}
	return *v.HealthPath
}

// Validate checks the whole state and returns every problem found, joined.
func (s *State) Validate() error {
	var errs []error
	names := make([]string, 0, len(s.Models))
	for n := range s.Models {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		m := s.Models[n]
		if m == nil {
			errs = append(errs, fmt.Errorf("model %q: empty", n))
			continue
		}
		if m.Name != n {
			errs = append(errs, fmt.Errorf("model %q: name field %q differs from its key", n, m.Name))
		}
		if err := m.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Validate checks one model: names, endpoints, that the stable version
// exists, and that weights name known versions, are not negative, have at
// most two decimals and add up to exactly 100.
func (m *Model) Validate() error {
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("model %q: "+format, append([]any{m.Name}, a...)...))
	}
	if !nameRE.MatchString(m.Name) {
		bad("name must match %s", nameRE)
	}
	if len(m.Versions) == 0 {
		bad("has no versions")
	}
	seen := map[string]bool{}
	for _, v := range m.Versions {
		if !nameRE.MatchString(v.Name) || strings.Contains(v.Name, "|") {
			bad("version name %q must match %s", v.Name, nameRE)
		}
		if seen[v.Name] {
			bad("version %q listed twice", v.Name)
		}
		seen[v.Name] = true
		if err := v.validate(); err != nil {
			bad("version %q: %v", v.Name, err)
		}
	}
	if m.Stable == "" {
		bad("stable version is not set")
	} else if !seen[m.Stable] {
		bad("stable version %q is not one of its versions", m.Stable)
	}
	var sum float64
	for name, w := range m.Weights {
		switch {
		case !seen[name]:
			bad("weight for unknown version %q", name)
		case math.IsNaN(w) || math.IsInf(w, 0) || w < 0:
			bad("weight of version %q is %v; weights are percentages from 0 to 100", name, w)
		case w > 100:
			bad("weight of version %q is %v; weights are percentages from 0 to 100", name, w)
		case math.Abs(w*100-math.Round(w*100)) > 1e-6:
			bad("weight of version %q is %v; at most two decimals (basis points)", name, w)
		}
		sum += w
	}
	if len(m.Weights) == 0 {
		bad("has no weights; give the stable version 100")
	} else if math.Abs(sum-100) > 1e-6 {
		bad("weights add up to %v, not 100", strconv.FormatFloat(sum, 'f', -1, 64))
	}
	if m.Shadow != nil {
		if err := m.Shadow.validate(m); err != nil {
			bad("shadow: %v", err)
		}
	}
	for cat, v := range m.CategoryOverrides {
		if cat == "" {
			bad("category override with an empty category")
		}
		if !seen[v] {
			bad("category %q is sent to unknown version %q", cat, v)
		}
	}
	if r := m.RequestRateRPS; r < 0 || math.IsNaN(r) || math.IsInf(r, 0) {
		bad("request_rate_rps is %v; must be a finite number ≥ 0", r)
	}
	if err := m.Cohorts.validate(); err != nil {
		bad("cohorts: %v", err)
	}
	return errors.Join(errs...)
}

func (v Version) validate() error {
	var errs []error
	if len(v.Endpoints) == 0 {
		errs = append(errs, errors.New("has no endpoints"))
	}
	for _, ep := range v.Endpoints {
		host, port, err := net.SplitHostPort(ep)
		if err != nil || host == "" {
			errs = append(errs, fmt.Errorf("endpoint %q is not host:port", ep))
			continue
		}
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			errs = append(errs, fmt.Errorf("endpoint %q has an invalid port", ep))
		}
	}
	md := v.Metadata
	for name, x := range map[string]float64{
		"price_input_per_1k": md.PriceInputPer1K, "price_output_per_1k": md.PriceOutputPer1K,
		"gpu_memory_gb": md.GPUMemoryGB, "parameters_b": md.ParametersB,
		"price_per_gpu_hour": md.PricePerGPUHour, "capacity_rps": md.CapacityRPS,
	} {
		if x < 0 || math.IsNaN(x) || math.IsInf(x, 0) {
			errs = append(errs, fmt.Errorf("metadata %s is %v; must be a finite number ≥ 0", name, x))
		}
	}
	if md.Replicas < 0 {
		errs = append(errs, fmt.Errorf("metadata replicas is %d; must be ≥ 0", md.Replicas))
	}
	if md.GPUsPerReplica < 0 {
		errs = append(errs, fmt.Errorf("metadata gpus_per_replica is %d; must be ≥ 0", md.GPUsPerReplica))
	}
	if v.HealthPath != nil && *v.HealthPath != "" && !strings.HasPrefix(*v.HealthPath, "/") {
		errs = append(errs, fmt.Errorf("health_path %q must start with /", *v.HealthPath))
	}
	return errors.Join(errs...)
}

// Clone returns a deep copy, so a change can be validated on the copy and
// the current state stays untouched when it is rejected.
func (s *State) Clone() *State {
	out := &State{Revision: s.Revision, Models: make(map[string]*Model, len(s.Models))}
	for n, m := range s.Models {
		out.Models[n] = m.clone()
	}
	return out
}

func (m *Model) clone() *Model {
	c := *m
	c.Versions = make([]Version, len(m.Versions))
	for i, v := range m.Versions {
		c.Versions[i] = v
		c.Versions[i].Endpoints = append([]string(nil), v.Endpoints...)
		if v.HealthPath != nil {
			p := *v.HealthPath
			c.Versions[i].HealthPath = &p
		}
	}
	c.Weights = make(map[string]float64, len(m.Weights))
	for k, w := range m.Weights {
		c.Weights[k] = w
	}
	if m.Shadow != nil {
		sh := *m.Shadow
		c.Shadow = &sh
	}
	if m.CategoryOverrides != nil {
		c.CategoryOverrides = make(map[string]string, len(m.CategoryOverrides))
		for k, v := range m.CategoryOverrides {
			c.CategoryOverrides[k] = v
		}
	}
	c.Cohorts = m.Cohorts.clone()
	c.History = append([]StableChange(nil), m.History...)
	c.Lanes = append([]Lane(nil), m.Lanes...)
	return &c
}

// ModelNames returns the model names in sorted order.
func (s *State) ModelNames() []string {
	names := make([]string, 0, len(s.Models))
	for n := range s.Models {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func sortStrings(s []string) { sort.Strings(s) }
