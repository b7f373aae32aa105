package xds

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmcanary/llmcanary/internal/health"
)

// fleetCollector exports the fleet as the control plane sees it, read at
// each scrape: connected Envoys, their ACKs and NACKs by resource type,
// and how many revisions each Envoy's routes are behind the desired state.
type fleetCollector struct {
	store Store
	pub   *Publisher

	connected, acks, nacks, lag, revision, published *prometheus.Desc
}

var _ prometheus.Collector = (*fleetCollector)(nil)

func newFleetCollector(store Store, pub *Publisher) *fleetCollector {
	name := func(n string) string { return prometheus.BuildFQName("llmcanary", "control", n) }
	return &fleetCollector{
		store: store, pub: pub,
		connected: prometheus.NewDesc(name("envoys_connected"), "Envoys connected over xDS that take routes.", nil, nil),
		acks:      prometheus.NewDesc(name("xds_acks_total"), "Configuration responses the Envoys accepted, by resource type.", []string{"type"}, nil),
		nacks:     prometheus.NewDesc(name("xds_nacks_total"), "Configuration responses the Envoys rejected, by resource type; any is worth a look.", []string{"type"}, nil),
		lag: prometheus.NewDesc(name("envoy_revision_lag"),
			"Revisions of the desired state an Envoy's accepted routes are behind (0: it serves the latest weights).", []string{"node", "cluster"}, nil),
		revision:  prometheus.NewDesc(name("state_revision"), "Revision of the desired state (models, versions, weights).", nil, nil),
		published: prometheus.NewDesc(name("published_revision"), "Revision of the last snapshot published to the fleet.", nil, nil),
	}
}

func (c *fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.connected, c.acks, c.nacks, c.lag, c.revision, c.published} {
		ch <- d
	}
}

func (c *fleetCollector) Collect(ch chan<- prometheus.Metric) {
	rev := c.store.State().Revision
	nodes := c.pub.Fleet().Nodes()
	ch <- prometheus.MustNewConstMetric(c.connected, prometheus.GaugeValue, float64(len(nodes)))
	ch <- prometheus.MustNewConstMetric(c.revision, prometheus.GaugeValue, float64(rev))
	ch <- prometheus.MustNewConstMetric(c.published, prometheus.GaugeValue, float64(c.pub.Published()))
	for _, n := range nodes {
		lag := float64(0)
		if n.RouteRevision < rev {
			lag = float64(rev - n.RouteRevision)
		}
		ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, lag, n.ID, n.Cluster)
	}
	acks, nacks := c.pub.Fleet().Replies()
	// The four types the fleet takes are always exported, at 0 before the
	// first reply, so that increase() sees the first NACK.
	for _, t := range []string{resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType} {
		acks[t] += 0
		nacks[t] += 0
	}
	for t, n := range acks {
		ch <- prometheus.MustNewConstMetric(c.acks, prometheus.CounterValue, float64(n), shortType(t))
	}
	for t, n := range nacks {
		ch <- prometheus.MustNewConstMetric(c.nacks, prometheus.CounterValue, float64(n), shortType(t))
	}
}

// shortType turns a type URL into the resource's message name
// (envoy.config.route.v3.RouteConfiguration).
func shortType(typeURL string) string {
	return typeURL[strings.LastIndex(typeURL, "/")+1:]
}

// readyCheck is the control plane's readiness: its durable state is
// loaded and the latest accepted revision is published, so an Envoy that
// connects gets the current weights. A change saved but not published
// (a translation that failed) makes it not ready until a later change
// publishes.
func readyCheck(store Store, pub *Publisher) health.Check {
	return health.Check{Name: "state_published", Fn: func(context.Context) error {
		rev, published := store.State().Revision, pub.Published()
		if published != rev {
			return fmt.Errorf("state revision %d is saved but revision %d is what the fleet is offered", rev, published)
		}
		return nil
	}}
}

// observe registers the control plane's metrics on reg and returns the
// handler that serves the management API with /readyz and /metrics beside
// it, counting the API's requests.
func observe(reg *prometheus.Registry, store Store, pub *Publisher, api http.Handler) (http.Handler, error) {
	requests := health.NewRequestCounter("llmcanary", "control", "Management API requests by route, method and status code.")
	for _, c := range []prometheus.Collector{newFleetCollector(store, pub), requests} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("control plane metrics: %w", err)
		}
	}
	// The API serves its own /healthz (with the revisions).
	return health.Beside(api, reg, requests, false, readyCheck(store, pub)), nil
}
