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

// fleetHash puts every Envoy in one group: the whole fleet gets the same
// snapshot, so any Envoy routes a bucket the same way.
type fleetHash struct{}

func (fleetHash) ID(*corev3.Node) string { return fleetGroup }

const fleetGroup = "fleet"

// Publisher turns accepted states into xDS snapshots. It owns the snapshot
// cache; safe for concurrent use.
type Publisher struct {
	gateway Gateway
	cache   cache.SnapshotCache
	log     *slog.Logger

	mu        sync.Mutex
	published uint64
}

// NewPublisher returns a publisher for the given gateway shape.
func NewPublisher(g Gateway, log *slog.Logger) *Publisher {
	if log == nil {
		log = slog.Default()
	}
	return &Publisher{gateway: g, cache: cache.NewSnapshotCache(true, fleetHash{}, nil), log: log}
}

// Cache returns the snapshot cache the xDS server serves from.
func (p *Publisher) Cache() cache.SnapshotCache { return p.cache }

// Prepare translates s into a snapshot after checking that every resource
// validates and that the snapshot is consistent (every route's cluster
// exists, every EDS cluster has endpoints), and returns the function that
// publishes it. An invalid state is never published; the fleet keeps the
// previous one.
func (p *Publisher) Prepare(s *State) (func() error, error) {
	res, err := Translate(s, p.gateway)
	if err != nil {
		return nil, err
	}
	snap, err := snapshotOf(s, res)
	if err != nil {
		return nil, err
	}
	if err := snap.Consistent(); err != nil {
		return nil, fmt.Errorf("snapshot %d is not consistent: %w", s.Revision, err)
	}
	rev, models, clusters := s.Revision, len(s.Models), len(res.Clusters)
	return func() error {
		p.mu.Lock()
		defer p.mu.Unlock()
		if err := p.cache.SetSnapshot(context.Background(), fleetGroup, snap); err != nil {
			return fmt.Errorf("set snapshot %d: %w", rev, err)
		}
		p.published = rev
		p.log.Info("published snapshot", "revision", rev, "models", models, "clusters", clusters)
		return nil
	}, nil
}

// Publish prepares and publishes s at once (start-up, after a restart).
func (p *Publisher) Publish(s *State) error {
	publish, err := p.Prepare(s)
	if err != nil {
		return err
	}
	return publish()
}

// Published returns the revision of the last published snapshot.
func (p *Publisher) Published() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.published
}

// snapshotOf builds a validated snapshot versioned by the state's revision.
func snapshotOf(s *State, r *Resources) (*cache.Snapshot, error) {
	byType := map[resource.Type][]types.Resource{}
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
	return cache.NewSnapshot(strconv.FormatUint(s.Revision, 10), byType)
}

// RegisterServer registers the aggregated (ADS, state-of-the-world and
// delta) and the per-type discovery services on g.
func RegisterServer(ctx context.Context, g *grpc.Server, p *Publisher, cb serverv3.Callbacks) {
	srv := serverv3.NewServer(ctx, p.cache, cb)
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(g, srv)
	listenerservice.RegisterListenerDiscoveryServiceServer(g, srv)
	routeservice.RegisterRouteDiscoveryServiceServer(g, srv)
	clusterservice.RegisterClusterDiscoveryServiceServer(g, srv)
	endpointservice.RegisterEndpointDiscoveryServiceServer(g, srv)
}
