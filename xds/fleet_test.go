package xds

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
)

func TestFleetCountsAcksNotNacksPerEnvoy(t *testing.T) {
	f := newFleet()
	route := resource.RouteType
	// gw-0 on state of the world, gw-1 on delta, both stream id 1.
	f.sotwRequest(1, &discoverygrpc.DiscoveryRequest{Node: &corev3.Node{Id: "gw-0"}, TypeUrl: route})
	f.deltaRequest(1, &discoverygrpc.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "gw-1"}, TypeUrl: route})
	f.sotwResponse(1, &discoverygrpc.DiscoveryResponse{TypeUrl: route, Nonce: "a", VersionInfo: "7.0"})
	f.deltaResponse(1, &discoverygrpc.DeltaDiscoveryResponse{TypeUrl: route, Nonce: "b", SystemVersionInfo: "7.0"})
	if st := (FleetStatus{Nodes: f.Nodes()}); len(st.Nodes) != 2 || st.Applied(7) {
		t.Fatalf("before any ACK: %+v", st.Nodes)
	}
	f.sotwRequest(1, &discoverygrpc.DiscoveryRequest{TypeUrl: route, ResponseNonce: "a", VersionInfo: "7.0"})
	f.deltaRequest(1, &discoverygrpc.DeltaDiscoveryRequest{TypeUrl: route, ResponseNonce: "b", ErrorDetail: &status.Status{Message: "rejected"}})
	nodes := f.Nodes()
	if nodes[0].ID != "gw-0" || nodes[0].RouteRevision != 7 || nodes[1].ID != "gw-1" || nodes[1].RouteRevision != 0 {
		t.Fatalf("after an ACK from gw-0 and a NACK from gw-1: %+v", nodes)
	}
	if (FleetStatus{Nodes: nodes}).Applied(7) {
		t.Fatal("revision 7 reported applied although gw-1 rejected it")
	}
	f.closed(streamKey{delta: true, id: 1})
	if st := (FleetStatus{Nodes: f.Nodes()}); len(st.Nodes) != 1 || !st.Applied(7) {
		t.Fatalf("after gw-1 left: %+v", st.Nodes)
	}
	if (FleetStatus{}).Applied(1) {
		t.Fatal("an empty fleet cannot have applied anything")
	}
}
