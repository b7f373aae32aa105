package envoy

import (
	"strings"
	"testing"
)

func TestBootstrapListsReplicasAtPrioritiesInTheGivenOrderAndHealthChecksThem(t *testing.T) {
	b, err := Bootstrap(BootstrapOptions{NodeID: "gw", Cluster: "c", XDS: "10.0.0.2:18000, 10.0.0.1:18000", AdminPort: 9901})
	if err != nil {
		t.Fatal(err)
	}
	y := string(b)
	first, second := strings.Index(y, "address: 10.0.0.2, port_value: 18000"), strings.Index(y, "address: 10.0.0.1, port_value: 18000")
	prio := strings.Index(y, "priority: 1")
	if first < 0 || second < 0 || prio < first || prio > second {
		t.Fatalf("want 10.0.0.2 at priority 0 and 10.0.0.1 at priority 1:\n%s", y)
	}
	if !strings.Contains(y, "grpc_health_check: {}") || !strings.Contains(y, "no_traffic_interval: 0.500s") {
		t.Fatalf("replicas are not health-checked:\n%s", y)
	}
}

func TestBootstrapWithOneControlPlaneHasNoHealthCheck(t *testing.T) {
	b, err := Bootstrap(BootstrapOptions{NodeID: "gw", Cluster: "c", XDS: "cp.internal:18000", AdminPort: 9901})
	if err != nil {
		t.Fatal(err)
	}
	if y := string(b); strings.Contains(y, "health_checks") || strings.Contains(y, "priority") || !strings.Contains(y, "type: STRICT_DNS") {
		t.Fatalf("one control plane by name: want a STRICT_DNS cluster without priorities or checks:\n%s", y)
	}
}

func TestBootstrapRejectsABadOrRepeatedReplicaAddress(t *testing.T) {
	for _, xds := range []string{"127.0.0.1:1,", "127.0.0.1:1,127.0.0.1", "127.0.0.1:1,127.0.0.1:1"} {
		if _, err := Bootstrap(BootstrapOptions{NodeID: "gw", Cluster: "c", XDS: xds, AdminPort: 9901}); err == nil || !strings.Contains(err.Error(), "xds address") {
			t.Errorf("--xds %q: %v, want an xds address error", xds, err)
		}
	}
}
