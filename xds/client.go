package xds

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/llmcanary/llmcanary/internal/httpapi"
)

// Client calls the management API. The CLI, the analyzer and the tests use
// it. Safe for concurrent use.
type Client struct {
	BaseURL string // e.g. http://127.0.0.1:18080, or the replicas' URLs separated by commas
	Token   string
	Actor   string // recorded in the audit trail
	HTTP    *http.Client

	// api is the HTTP client made from the fields above on first use; it
	// remembers which of several URLs answered last.
	api atomic.Pointer[httpapi.Client]
}

// APIError is a non-2xx answer of the API.
type APIError = httpapi.APIError

// State returns the whole desired state.
func (c *Client) State(ctx context.Context) (*State, error) {
	var s State
	return &s, c.do(ctx, "GET", "/v1/state", nil, &s)
}

// Model returns one model.
func (c *Client) Model(ctx context.Context, name string) (*Model, error) {
	var m Model
	return &m, c.do(ctx, "GET", "/v1/models/"+url.PathEscape(name), nil, &m)
}

// PutModel creates or replaces a model.
func (c *Client) PutModel(ctx context.Context, m *Model) (*Model, error) {
	var out Model
	return &out, c.do(ctx, "PUT", "/v1/models/"+url.PathEscape(m.Name), m, &out)
}

// PutVersion adds a version (with no traffic) or replaces its definition.
func (c *Client) PutVersion(ctx context.Context, model string, v Version) (*Model, error) {
	var out Model
	return &out, c.do(ctx, "PUT", "/v1/models/"+url.PathEscape(model)+"/versions/"+url.PathEscape(v.Name), v, &out)
}

// SetWeights sets a model's weights atomically; stable may be "" to keep it.
func (c *Client) SetWeights(ctx context.Context, model string, weights map[string]float64, stable string) (*Model, error) {
	return c.SetWeightsBecause(ctx, model, weights, stable, Cause{})
}

// SetWeightsBecause is SetWeights with the cause the model's history keeps
// when the stable version changes.
func (c *Client) SetWeightsBecause(ctx context.Context, model string, weights map[string]float64, stable string, cause Cause) (*Model, error) {
	var out Model
	hc := c.client()
	if cause.Actor != "" {
		hc = hc.As(cause.Actor)
	}
	return &out, hc.Do(ctx, "PUT", "/v1/models/"+url.PathEscape(model)+"/weights", WeightsRequest{Weights: weights, Stable: stable, Cause: cause}, &out)
}

// SetCohorts replaces a model's cohorts.
func (c *Client) SetCohorts(ctx context.Context, model string, co Cohorts) (*Model, error) {
	var out Model
	return &out, c.do(ctx, "PUT", "/v1/models/"+url.PathEscape(model)+"/cohorts", co, &out)
}

// History returns a model's stable history.
func (c *Client) History(ctx context.Context, model string) (*HistoryView, error) {
	var out HistoryView
	return &out, c.do(ctx, "GET", "/v1/models/"+url.PathEscape(model)+"/history", nil, &out)
}

// Applied is what the answer to a change says of the fleet: how many Envoys
// were connected and how many of them served the change's revision.
type Applied struct {
	Revision  uint64
	Connected int
	Applied   int
}

// InForce reports whether at least one Envoy is connected and every
// connected Envoy serves the change.
func (a Applied) InForce() bool { return a.Connected > 0 && a.Applied == a.Connected }

func (a Applied) String() string {
	return fmt.Sprintf("revision %d served by %d of %d connected Envoys", a.Revision, a.Applied, a.Connected)
}

// SetWeightsWait sets a model's weights and lets the answer wait up to wait
// (at most MaxWait) for every connected Envoy to accept them. The change
// stands whether or not the fleet has it yet; Applied says which.
func (c *Client) SetWeightsWait(ctx context.Context, model string, weights map[string]float64, stable string, wait time.Duration) (*Model, Applied, error) {
	var out Model
	path := "/v1/models/" + url.PathEscape(model) + "/weights?wait=" + url.QueryEscape(wait.String())
	h, err := c.client().DoHeader(ctx, "PUT", path, WeightsRequest{Weights: weights, Stable: stable}, &out)
	if err != nil {
		return nil, Applied{}, err
	}
	var a Applied
	var errs [3]error
	a.Revision, errs[0] = strconv.ParseUint(strings.Trim(h.Get("ETag"), `"`), 10, 64)
	a.Connected, errs[1] = strconv.Atoi(h.Get(HeaderFleetConnected))
	a.Applied, errs[2] = strconv.Atoi(h.Get(HeaderFleetApplied))
	if err := errors.Join(errs[:]...); err != nil {
		return &out, a, fmt.Errorf("management api: the answer does not say what the fleet serves: %w", err)
	}
	return &out, a, nil
}

// Fleet returns the connected Envoys and the route revision each accepted.
func (c *Client) Fleet(ctx context.Context) (*FleetStatus, error) {
	var f FleetStatus
	return &f, c.do(ctx, "GET", "/v1/fleet", nil, &f)
}

// WaitApplied waits until every connected Envoy (at least one) runs the
// routes of the current revision or a later one.
func (c *Client) WaitApplied(ctx context.Context) error {
	rev, err := c.Revision(ctx)
	if err != nil {
		return err
	}
	for {
		f, err := c.Fleet(ctx)
		if err == nil && f.Applied(rev) {
			return nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("%d Envoys connected, not all at revision %d: %+v", len(f.Nodes), rev, f.Nodes)
			}
			return fmt.Errorf("wait for the fleet to apply revision %d: %w (%v)", rev, ctx.Err(), err)
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// Revision returns the current revision of the desired state.
func (c *Client) Revision(ctx context.Context) (uint64, error) {
	s, err := c.State(ctx)
	if err != nil {
		return 0, err
	}
	return s.Revision, nil
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	return c.client().Do(ctx, method, path, in, out)
}

func (c *Client) client() *httpapi.Client {
	if a := c.api.Load(); a != nil {
		return a
	}
	c.api.CompareAndSwap(nil, &httpapi.Client{API: "management api", BaseURL: c.BaseURL, Token: c.Token, Actor: c.Actor, HTTP: c.HTTP})
	return c.api.Load()
}
