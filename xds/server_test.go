package xds

import (
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

// nodeMeta is the metadata of a node that binds its own listener.
func nodeMeta(t *testing.T, addr string, port int) *structpb.Struct {
	t.Helper()
	m, err := structpb.NewStruct(map[string]any{MetaListenerAddress: addr, MetaListenerPort: port})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// brokenExtension is a hand-written Extension whose output Envoy would
// refuse: a cluster with a negative connect timeout, or an EDS cluster
// that no endpoint assignment backs.
type brokenExtension struct {
	negativeTimeout bool
	edsCluster      bool
}

func (b brokenExtension) Name() string        { return "broken" }
func (b brokenExtension) VerifiesForce() bool { return false }
func (b brokenExtension) HTTPFilter(*State) (*hcmv3.HttpFilter, error) {
	return &hcmv3.HttpFilter{Name: "llmcanary.test", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})}}, nil
}
func (b brokenExtension) Clusters() []*clusterv3.Cluster {
	if b.negativeTimeout {
		return []*clusterv3.Cluster{{Name: "negative", ConnectTimeout: durationpb.New(-time.Second)}}
	}
	if !b.edsCluster {
		return nil
	}
	return []*clusterv3.Cluster{{
		Name:                 "orphan",
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource()},
	}}
}

var _ Extension = brokenExtension{}

// Whatever the translator is given, the cache only ever gets a snapshot
// whose resources validate and that is consistent; the fleet keeps the
// one it had, and a node group joining later gets that one too.
func TestPublisherRejectsWhatEnvoyWouldRefuseAndKeepsThePreviousSnapshot(t *testing.T) {
	good := rulesState()
	good.Revision = 1
	tests := []struct {
		name  string
		state func() *State
		ext   Extension
	}{
		{"weights that do not add up to 100", func() *State {
			s := rulesState()
			s.Models["m"].Weights = map[string]float64{"v1": 80, "v2": 10}
			return s
		}, nil},
		{"a version without endpoints", func() *State {
			s := rulesState()
			s.Models["m"].Versions[2].Endpoints = nil
			return s
		}, nil},
		{"a weight for a version the model does not have", func() *State {
			s := rulesState()
			s.Models["m"].Weights = map[string]float64{"v1": 90, "v9": 10}
			return s
		}, nil},
		{"a cluster that fails proto validation", rulesState, brokenExtension{negativeTimeout: true}},
		{"an EDS cluster without endpoints (inconsistent snapshot)", rulesState, brokenExtension{edsCluster: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := NewPublisher(DefaultGateway(), quiet)
			if err := p.Publish(good); err != nil {
				t.Fatal(err)
			}
			if tc.ext != nil {
				p.gateway.Extensions = []Extension{tc.ext}
			}
			bad := tc.state()
			bad.Revision = 2
			if err := p.Publish(bad); err == nil {
				t.Fatal("published")
			}
			if p.Published() != 1 {
				t.Fatalf("published revision %d, want 1", p.Published())
			}
			snap, err := p.Cache().GetSnapshot("fleet")
			if err != nil || snap.GetVersion(resource.RouteType) != "1.0" {
				t.Fatalf("fleet snapshot %v (%v), want the previous one", snap.GetVersion(resource.RouteType), err)
			}
			// A node with a listener of its own joins: its group is built
			// from the state last published, through the same checks.
			p.join(&corev3.Node{Id: "late", Metadata: nodeMeta(t, "127.0.0.2", 10001)})
			key := ListenerOverride{Address: "127.0.0.2", Port: 10001}.group()
			if tc.ext != nil {
				if _, err := p.Cache().GetSnapshot(key); err == nil {
					t.Fatal("a joining group got a snapshot the checks refuse")
				}
				return
			}
			if snap, err := p.Cache().GetSnapshot(key); err != nil || snap.GetVersion(resource.RouteType) != "1.0" {
				t.Fatalf("joined group's snapshot %v (%v), want revision 1", snap, err)
			}
		})
	}
}
