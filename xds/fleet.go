package xds

import (
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// Fleet tracks which revision of the route configuration each connected
// Envoy has accepted (ACKed), over state-of-the-world and delta xDS alike.
// A weight change is in force only once the fleet has it: the analyzer
// starts a stage's measurement window then, not when it asked for it.
// Safe for concurrent use.
type Fleet struct {
	mu      sync.Mutex
	streams map[streamKey]*fleetStream
	// replies counts the Envoys' answers to responses, by resource type:
	// an ACK or a NACK (the request carries an error).
	replies map[replyKey]uint64
}

type replyKey struct {
	typeURL string
	nack    bool
}

// streamKey names a stream: the state-of-the-world and the delta servers
// number their streams independently, so ids alone collide.
type streamKey struct {
	delta bool
	id    int64
}

type fleetStream struct {
	node      string
	cluster   string
	since     time.Time
	nonces    map[string]uint64 // route responses in flight: nonce → revision
	acked     uint64
	ackedAt   time.Time
	subscribe bool // the stream asked for routes at least once
}

// NodeStatus is one connected Envoy as the management API reports it.
type NodeStatus struct {
	ID            string    `json:"id"`
	Cluster       string    `json:"cluster"`
	ConnectedAt   time.Time `json:"connected_at"`
	RouteRevision uint64    `json:"route_revision"`
	AckedAt       time.Time `json:"acked_at,omitempty"`
}

// FleetStatus is GET /v1/fleet.
type FleetStatus struct {
	// Revision is the desired state's current revision.
	Revision uint64       `json:"revision"`
	Nodes    []NodeStatus `json:"nodes"`
}

// Applied reports whether at least one Envoy is connected and every
// connected Envoy runs routes of revision rev or later.
func (s FleetStatus) Applied(rev uint64) bool {
	if len(s.Nodes) == 0 {
		return false
	}
	for _, n := range s.Nodes {
		if n.RouteRevision < rev {
			return false
		}
	}
	return true
}

func newFleet() *Fleet {
	return &Fleet{streams: map[streamKey]*fleetStream{}, replies: map[replyKey]uint64{}}
}

// Replies returns how many ACKs and NACKs the fleet has sent, by
// resource type URL, since the control plane started.
func (f *Fleet) Replies() (acks, nacks map[string]uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	acks, nacks = map[string]uint64{}, map[string]uint64{}
	for k, n := range f.replies {
		if k.nack {
			nacks[k.typeURL] += n
		} else {
			acks[k.typeURL] += n
		}
	}
	return acks, nacks
}

// revisionOf reads the state revision from a snapshot version "rev.gen".
func revisionOf(version string) (uint64, bool) {
	rev, _, _ := strings.Cut(version, ".")
	n, err := strconv.ParseUint(rev, 10, 64)
	return n, err == nil
}

func (f *Fleet) stream(id streamKey, n *corev3.Node) *fleetStream {
	s, ok := f.streams[id]
	if !ok {
		s = &fleetStream{since: time.Now(), nonces: map[string]uint64{}}
		f.streams[id] = s
	}
	if n.GetId() != "" {
		s.node, s.cluster = n.GetId(), n.GetCluster()
	}
	return s
}

func (f *Fleet) request(id streamKey, n *corev3.Node, typeURL, nonce string, nack bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if nonce != "" {
		// A request that names a response's nonce answers it.
		f.replies[replyKey{typeURL, nack}]++
	}
	if typeURL != resource.RouteType {
		f.stream(id, n)
		return
	}
	s := f.stream(id, n)
	s.subscribe = true
	rev, sent := s.nonces[nonce]
	if !sent {
		return
	}
	delete(s.nonces, nonce)
	if !nack && rev > s.acked {
		s.acked, s.ackedAt = rev, time.Now()
	}
}

func (f *Fleet) response(id streamKey, typeURL, nonce, version string) {
	if typeURL != resource.RouteType {
		return
	}
	rev, ok := revisionOf(version)
	if !ok {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.stream(id, nil)
	s.nonces[nonce] = rev
	// Envoy answers every response; bound what an unanswered stream keeps.
	if len(s.nonces) > 64 {
		for k := range s.nonces {
			delete(s.nonces, k)
			break
		}
	}
}

func (f *Fleet) closed(id streamKey) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.streams, id)
}

// Nodes returns the connected Envoys that take routes, by node id. A node
// with several streams (one per type without ADS) reports its newest ACK.
func (f *Fleet) Nodes() []NodeStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	byNode := map[string]NodeStatus{}
	for _, s := range f.streams {
		if !s.subscribe || s.node == "" {
			continue
		}
		n, ok := byNode[s.node]
		if !ok || s.acked > n.RouteRevision {
			n = NodeStatus{ID: s.node, Cluster: s.cluster, ConnectedAt: s.since, RouteRevision: s.acked, AckedAt: s.ackedAt}
		}
		byNode[s.node] = n
	}
	out := make([]NodeStatus, 0, len(byNode))
	for _, n := range byNode {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// callbacks feed the fleet from the xDS server's stream events.
func (f *Fleet) sotwRequest(id int64, r *discoverygrpc.DiscoveryRequest) {
	f.request(streamKey{false, id}, r.GetNode(), r.GetTypeUrl(), r.GetResponseNonce(), r.GetErrorDetail() != nil)
}

func (f *Fleet) sotwResponse(id int64, r *discoverygrpc.DiscoveryResponse) {
	f.response(streamKey{false, id}, r.GetTypeUrl(), r.GetNonce(), r.GetVersionInfo())
}

func (f *Fleet) deltaRequest(id int64, r *discoverygrpc.DeltaDiscoveryRequest) {
	f.request(streamKey{true, id}, r.GetNode(), r.GetTypeUrl(), r.GetResponseNonce(), r.GetErrorDetail() != nil)
}

func (f *Fleet) deltaResponse(id int64, r *discoverygrpc.DeltaDiscoveryResponse) {
	f.response(streamKey{true, id}, r.GetTypeUrl(), r.GetNonce(), r.GetSystemVersionInfo())
}
