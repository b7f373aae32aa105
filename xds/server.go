package xds

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
)

// Envoys of a fleet share one snapshot, so any Envoy routes a bucket the
// same way. The only thing a node may set for itself is where its listener
// binds (node metadata MetaListenerAddress and MetaListenerPort), for hosts
// that run several Envoys; nodes with the same override share a snapshot
// group.
const (
	MetaListenerAddress = "llmcanary_listener_address"
	MetaListenerPort    = "llmcanary_listener_port"
)

// ListenerOverride is a node's own listener address, from its metadata.
type ListenerOverride struct {
	Address string
	Port    uint32
}

func overrideOf(n *corev3.Node) ListenerOverride {
	var o ListenerOverride
	f := n.GetMetadata().GetFields()
	if f == nil {
		return o
	}
	o.Address = f[MetaListenerAddress].GetStringValue()
	if p := f[MetaListenerPort].GetNumberValue(); p > 0 && p < 65536 {
		o.Port = uint32(p)
	} else if ps := f[MetaListenerPort].GetStringValue(); ps != "" {
		if n, err := strconv.ParseUint(ps, 10, 16); err == nil {
			o.Port = uint32(n)
		}
	}
	return o
}

func (o ListenerOverride) group() string {
	if o == (ListenerOverride{}) {
		return "fleet"
	}
	return "listener=" + o.Address + ":" + strconv.FormatUint(uint64(o.Port), 10)
}

type groupHash struct{}

func (groupHash) ID(n *corev3.Node) string { return overrideOf(n).group() }

// Publisher turns accepted states into xDS snapshots. It owns the snapshot
// cache; safe for concurrent use.
type Publisher struct {
	gateway Gateway
	cache   cache.SnapshotCache
	log     *slog.Logger

	mu        sync.Mutex
	current   *State
	published uint64
	fleet     *Fleet
	// gen counts gateway changes that happen without a state change (a
	// rotated force key); it is part of the snapshot version so Envoys
	// notice them.
	gen    uint64
	groups map[string]ListenerOverride
}

// NewPublisher returns a publisher for the given gateway shape.
func NewPublisher(g Gateway, log *slog.Logger) *Publisher {
	if log == nil {
		log = slog.Default()
	}
	return &Publisher{
		gateway: g,
		cache:   cache.NewSnapshotCache(true, groupHash{}, nil),
		log:     log,
		groups:  map[string]ListenerOverride{"fleet": {}},
		fleet:   newFleet(),
	}
}

// Sampling returns how m's traffic is measured by the gateway, nil when it
// has no telemetry filter.
func (p *Publisher) Sampling(m *Model) *Sampling { return measuringOf(p.gateway).sampling(m) }

// Cache returns the snapshot cache the xDS server serves from.
func (p *Publisher) Cache() cache.SnapshotCache { return p.cache }

func (p *Publisher) gatewayFor(o ListenerOverride) Gateway {
	g := p.gateway
	if o.Address != "" {
		g.ListenerAddress = o.Address
	}
	if o.Port != 0 {
		g.ListenerPort = o.Port
	}
	return g
}

// build translates s for every snapshot group.
func (p *Publisher) build(s *State, groups map[string]ListenerOverride) (map[string]*cache.Snapshot, int, error) {
	snaps := map[string]*cache.Snapshot{}
	clusters := 0
	version := p.version(s.Revision)
	for key, o := range groups {
		snap, n, err := p.snapshotFor(s, o, version)
		if err != nil {
			return nil, 0, err
		}
		snaps[key], clusters = snap, n
	}
	return snaps, clusters, nil
}

// snapshotFor translates s for one snapshot group and returns the snapshot
// and its number of clusters, after checking that every resource validates
// and that the snapshot is consistent: every route's cluster exists and
// every EDS cluster has endpoints. Every snapshot the cache gets comes
// from here.
func (p *Publisher) snapshotFor(s *State, o ListenerOverride, version string) (*cache.Snapshot, int, error) {
	res, err := Translate(s, p.gatewayFor(o))
	if err != nil {
		return nil, 0, err
	}
	snap, err := snapshotOf(s, res, version)
	if err != nil {
		return nil, 0, err
	}
	if err := snap.Consistent(); err != nil {
		return nil, 0, fmt.Errorf("snapshot %d is not consistent: %w", s.Revision, err)
	}
	return snap, len(res.Clusters), nil
}

// Prepare translates s into snapshots after checking that every resource
// validates and that each snapshot is consistent (every route's cluster
// exists, every EDS cluster has endpoints), and returns the function that
// publishes them. An invalid state is never published; the fleet keeps the
// previous one.
func (p *Publisher) Prepare(s *State) (func() error, error) {
	p.mu.Lock()
	groups := make(map[string]ListenerOverride, len(p.groups))
	for k, o := range p.groups {
		groups[k] = o
	}
	p.mu.Unlock()
	snaps, clusters, err := p.build(s, groups)
	if err != nil {
		return nil, err
	}
	st := s.Clone()
	return func() error {
		p.mu.Lock()
		defer p.mu.Unlock()
		for key, snap := range snaps {
			if err := p.cache.SetSnapshot(context.Background(), key, snap); err != nil {
				return fmt.Errorf("set snapshot %d: %w", st.Revision, err)
			}
		}
		// A group that joined while this state was prepared gets it too.
		for key, o := range p.groups {
			if _, done := snaps[key]; !done {
				if err := p.setGroupLocked(st, key, o); err != nil {
					return err
				}
			}
		}
		p.current, p.published = st, st.Revision
		p.log.Info("published snapshot", "revision", st.Revision, "models", len(st.Models), "clusters", clusters)
		return nil
	}, nil
}

func (p *Publisher) setGroupLocked(s *State, key string, o ListenerOverride) error {
	snap, _, err := p.snapshotFor(s, o, p.versionLocked(s.Revision))
	if err != nil {
		return err
	}
	return p.cache.SetSnapshot(context.Background(), key, snap)
}

// Publish prepares and publishes s at once (start-up, after a restart).
func (p *Publisher) Publish(s *State) error {
	publish, err := p.Prepare(s)
	if err != nil {
		return err
	}
	return publish()
}

// Fleet returns what the connected Envoys have accepted.
func (p *Publisher) Fleet() *Fleet { return p.fleet }

// Published returns the revision of the last published snapshot.
func (p *Publisher) Published() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.published
}

// join makes sure the node's snapshot group exists before its first watch.
func (p *Publisher) join(n *corev3.Node) {
	o := overrideOf(n)
	key := o.group()
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.groups[key]; ok {
		return
	}
	p.groups[key] = o
	if p.current != nil {
		if err := p.setGroupLocked(p.current, key, o); err != nil {
			p.log.Error("cannot build snapshot for node group", "group", key, "error", err)
		}
	}
}

func (p *Publisher) version(rev uint64) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.versionLocked(rev)
}

// versionLocked names a snapshot: the state's revision and the gateway's
// generation.
func (p *Publisher) versionLocked(rev uint64) string {
	return strconv.FormatUint(rev, 10) + "." + strconv.FormatUint(p.gen, 10)
}

// Republish publishes the current state again after a gateway change.
func (p *Publisher) Republish() error {
	p.mu.Lock()
	p.gen++
	cur := p.current
	p.mu.Unlock()
	if cur == nil {
		return nil
	}
	return p.Publish(cur)
}

// snapshotOf builds a validated snapshot of the given version.
func snapshotOf(s *State, r *Resources, version string) (*cache.Snapshot, error) {
	// Every type is present, even when empty: the cache answers a watch
	// only when the type's version moves, so a missing type would leave an
	// Envoy waiting for its initial fetch.
	byType := map[resource.Type][]types.Resource{
		resource.ListenerType: {}, resource.RouteType: {}, resource.ClusterType: {}, resource.EndpointType: {},
	}
	add := func(t resource.Type, m interface {
		types.Resource
		ValidateAll() error
	}) error {
		if err := m.ValidateAll(); err != nil {
			return fmt.Errorf("%s failed validation: %w", t, err)
		}
		byType[t] = append(byType[t], m)
		return nil
	}
	for _, l := range r.Listeners {
		if err := add(resource.ListenerType, l); err != nil {
			return nil, err
		}
	}
	for _, rc := range r.Routes {
		if err := add(resource.RouteType, rc); err != nil {
			return nil, err
		}
	}
	for _, c := range r.Clusters {
		if err := add(resource.ClusterType, c); err != nil {
			return nil, err
		}
	}
	for _, e := range r.Endpoints {
		if err := add(resource.EndpointType, e); err != nil {
			return nil, err
		}
	}
	return cache.NewSnapshot(version, byType)
}

// RegisterServer registers the aggregated (ADS, state-of-the-world and
// delta) and the per-type discovery services on g.
func RegisterServer(ctx context.Context, g *grpc.Server, p *Publisher, log *slog.Logger) {
	cb := serverv3.CallbackFuncs{
		StreamRequestFunc: func(id int64, r *discoverygrpc.DiscoveryRequest) error {
			p.join(r.GetNode())
			p.fleet.sotwRequest(id, r)
			return nil
		},
		StreamResponseFunc: func(_ context.Context, id int64, _ *discoverygrpc.DiscoveryRequest, r *discoverygrpc.DiscoveryResponse) {
			p.fleet.sotwResponse(id, r)
		},
		StreamDeltaRequestFunc: func(id int64, r *discoverygrpc.DeltaDiscoveryRequest) error {
			p.join(r.GetNode())
			p.fleet.deltaRequest(id, r)
			return nil
		},
		StreamDeltaResponseFunc: func(id int64, _ *discoverygrpc.DeltaDiscoveryRequest, r *discoverygrpc.DeltaDiscoveryResponse) {
			p.fleet.deltaResponse(id, r)
		},
		StreamClosedFunc: func(id int64, n *corev3.Node) {
			p.fleet.closed(streamKey{false, id})
			log.Info("xds stream closed", "stream", id, "node", n.GetId())
		},
		DeltaStreamClosedFunc: func(id int64, n *corev3.Node) {
			p.fleet.closed(streamKey{true, id})
			log.Info("delta xds stream closed", "stream", id, "node", n.GetId())
		},
	}
	srv := serverv3.NewServer(ctx, p.cache, cb)
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(g, srv)
	listenerservice.RegisterListenerDiscoveryServiceServer(g, srv)
	routeservice.RegisterRouteDiscoveryServiceServer(g, srv)
	clusterservice.RegisterClusterDiscoveryServiceServer(g, srv)
	endpointservice.RegisterEndpointDiscoveryServiceServer(g, srv)
}
