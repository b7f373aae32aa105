package xds

import (
	"errors"
	"fmt"
	"math"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	upstreamcodecv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/upstream_codec/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmcanary/llmcanary/extproc/envoyconfig"
	"github.com/llmcanary/llmcanary/internal/wire"
)

// Shadow mirrors a share of a model's user traffic to one version. Envoy's
// router copies a sampled request (headers and body, x-request-id kept,
// the Host suffixed with "-shadow") to the version's shadow cluster, fire
// and forget: the user is answered by the version the weights picked and
// never sees the mirrored answer. The shadow cluster's upstream filters
// report the mirrored answer to the telemetry service, which records it
// apart from user traffic (wire.TableShadow), paired with the user's
// answer by request id.
type Shadow struct {
	// Version receives the mirrored requests; it must not be the stable
	// version.
	Version string `json:"version"`
	// Percent of the model's weighted (user) requests that are mirrored,
	// in [0, MaxShadowPercent], at most two decimals. It is the default
	// of the route's runtime fraction (runtime key ShadowRuntimeKey). 0
	// mirrors nothing and keeps the shadow cluster as it is: the analyzer
	// ends a shadow stage so, because Envoy 1.37 can crash when a cluster
	// whose upstream ext_proc filter still has streams open changes or
	// goes away (seen with the mirror switched off under load).
	Percent float64 `json:"percent"`
	// MaxConcurrent caps the mirrored requests in flight at the version's
	// pool (its shadow cluster's circuit breaker): a mirrored request over
	// the cap is dropped by Envoy, never the user's. 0 means
	// DefaultShadowConcurrency.
	MaxConcurrent uint32 `json:"max_concurrent,omitempty"`
}

// Limits of a Shadow.
const (
	// MaxShadowPercent is the largest share that may be mirrored: a
	// canary pool is usually smaller than stable's, and mirroring all of
	// stable's traffic doubles the fleet's inference load.
	MaxShadowPercent = 50
	// DefaultShadowConcurrency is the default cap on mirrored requests in
	// flight.
	DefaultShadowConcurrency = 16
)

// Mirrors reports whether s mirrors any request.
func (s *Shadow) Mirrors() bool { return s != nil && s.Percent > 0 }

// Concurrency returns the effective cap on mirrored requests in flight.
func (s Shadow) Concurrency() uint32 {
	if s.MaxConcurrent == 0 {
		return DefaultShadowConcurrency
	}
	return s.MaxConcurrent
}

func (s Shadow) validate(m *Model) error {
	var errs []error
	switch _, ok := m.Version(s.Version); {
	case s.Version == "":
		errs = append(errs, errors.New("version is not set"))
	case !ok:
		errs = append(errs, fmt.Errorf("version %q is not one of the model's versions", s.Version))
	case s.Version == m.Stable:
		errs = append(errs, fmt.Errorf("version %q is the stable version; mirror to a canary", s.Version))
	}
	switch {
	case math.IsNaN(s.Percent) || s.Percent < 0 || s.Percent > MaxShadowPercent:
		errs = append(errs, fmt.Errorf("percent is %v; mirror from 0 to at most %d %%", s.Percent, MaxShadowPercent))
	case math.Abs(s.Percent*100-math.Round(s.Percent*100)) > 1e-6:
		errs = append(errs, fmt.Errorf("percent is %v; at most two decimals (basis points)", s.Percent))
	}
	return errors.Join(errs...)
}

// ShadowClusterName names the cluster that receives a version's mirrored
// requests: the version's pool, with its own cap and observing filters.
func ShadowClusterName(model, version string) string {
	return ClusterName(model, version) + "|shadow"
}

// ShadowRuntimeKey is the runtime key of a model's mirrored share; an
// operator may override it in Envoy's runtime, the control plane sets its
// default.
func ShadowRuntimeKey(model string) string { return "llmcanary.shadow." + model }

// ShadowObserver is an Extension that observes mirrored requests: it
// returns the upstream HTTP filters of a version's shadow cluster (ahead
// of the upstream codec, which Translate appends), given the shadow
// cluster and what it serves.
type ShadowObserver interface {
	ShadowFilters(served envoyconfig.Served) ([]*hcmv3.HttpFilter, error)
}

// mirrorPolicy returns the mirror policy for m of a route that carries
// share (in (0, 1]) of the model's requests, or nil without shadow: it
// mirrors the part of them that makes the shadow's percent of all.
func mirrorPolicy(m *Model, share float64) []*routev3.RouteAction_RequestMirrorPolicy {
	if !m.Shadow.Mirrors() || !(share > 0) {
		return nil
	}
	return []*routev3.RouteAction_RequestMirrorPolicy{{
		Cluster: ShadowClusterName(m.Name, m.Shadow.Version),
		RuntimeFraction: &corev3.RuntimeFractionalPercent{
			DefaultValue: &typev3.FractionalPercent{
				Numerator:   uint32(min(math.Round(m.Shadow.Percent*100/share), 10000)),
				Denominator: typev3.FractionalPercent_TEN_THOUSAND,
			},
			RuntimeKey: ShadowRuntimeKey(m.Name),
		},
		TraceSampled: wrapperspb.Bool(false),
	}}
}

// shadowVersions are the versions of m that have a shadow cluster: with an
// observer of mirrored requests (ext_proc), every version but stable,
// whether it is mirrored to now or not. Envoy 1.37 may crash when a
// cluster whose upstream ext_proc filter still has streams open goes away
// (seen when the mirror was switched off under load), so a version's
// shadow cluster lives as long as the version does, with the cap of the
// model's shadow setting while it names the version (at 0 % too);
// without an observer, only the shadow version's.
func shadowVersions(m *Model, g Gateway) []Version {
	observed := false
	for _, ext := range g.Extensions {
		_, ok := ext.(ShadowObserver)
		observed = observed || ok
	}
	var out []Version
	for _, v := range m.Ordered() {
		if v.Name != m.Stable && (observed || m.Shadow != nil && m.Shadow.Version == v.Name) {
			out = append(out, v)
		}
	}
	return out
}

// shadowCluster derives the shadow cluster of one of m's versions from the
// version's own cluster: the same pool, the concurrency cap as its circuit
// breaker, the observers' upstream filters, and shadow marked in its
// metadata.
func shadowCluster(m *Model, v Version, g Gateway) (*clusterv3.Cluster, *endpointv3.ClusterLoadAssignment, error) {
	c, eds := cluster(m, v, g)
	c = proto.Clone(c).(*clusterv3.Cluster)
	name := ShadowClusterName(m.Name, v.Name)
	c.Name = name
	if eds != nil {
		eds = proto.Clone(eds).(*endpointv3.ClusterLoadAssignment)
		eds.ClusterName = name
	} else {
		c.LoadAssignment.ClusterName = name
	}
	n := uint32(DefaultShadowConcurrency)
	if m.Shadow != nil && m.Shadow.Version == v.Name {
		n = m.Shadow.Concurrency()
	}
	c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
		MaxConnections:     wrapperspb.UInt32(n),
		MaxPendingRequests: wrapperspb.UInt32(n),
		MaxRequests:        wrapperspb.UInt32(n),
		MaxRetries:         wrapperspb.UInt32(0),
	}}}
	// Health is the version's cluster's business; the shadow cluster would
	// only double the probes.
	c.HealthChecks = nil
	md := c.Metadata.FilterMetadata[wire.MetadataNamespace]
	md.Fields[wire.MetaShadow] = structpb.NewBoolValue(true)

	var filters []*hcmv3.HttpFilter
	for _, ext := range g.Extensions {
		if o, ok := ext.(ShadowObserver); ok {
			sv := servedBy(m, v)
			sv.Cluster = name
			fs, err := o.ShadowFilters(sv)
			if err != nil {
				return nil, nil, fmt.Errorf("extension %s: %w", ext.Name(), err)
			}
			filters = append(filters, fs...)
		}
	}
	if len(filters) > 0 {
		filters = append(filters, &hcmv3.HttpFilter{
			Name:       "envoy.filters.http.upstream_codec",
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&upstreamcodecv3.UpstreamCodec{})},
		})
		key := "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
		opts := &upstreamhttpv3.HttpProtocolOptions{}
		if err := c.TypedExtensionProtocolOptions[key].UnmarshalTo(opts); err != nil {
			return nil, nil, fmt.Errorf("shadow cluster %s: %w", name, err)
		}
		opts.HttpFilters = filters
		c.TypedExtensionProtocolOptions[key] = mustAny(opts)
	}
	return c, eds, nil
}
