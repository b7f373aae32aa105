package analyzer

import (
	"context"
	"net/http"
	"net/url"
	"sync/atomic"

	"github.com/llmcanary/llmcanary/internal/httpapi"
)

// Client calls the rollout API. The CLI and the tests use it. Safe for
// concurrent use.
type Client struct {
	BaseURL string // e.g. http://127.0.0.1:18090, or every analyzer's URL separated by commas (the leader acts)
	Token   string
	Actor   string // recorded in the rollout's history
	HTTP    *http.Client

	// api is the HTTP client made from the fields above on first use; it
	// remembers which of several URLs answered last.
	api atomic.Pointer[httpapi.Client]
}

// APIError is a non-2xx answer of the API.
type APIError = httpapi.APIError

// Start starts a rollout, or an A/B test when req.Mode is abtest.
func (c *Client) Start(ctx context.Context, req StartRequest) (*RolloutView, error) {
	var out RolloutView
	return &out, c.do(ctx, "POST", "/v1/rollouts", req, &out)
}

// Get returns one rollout with its progress.
func (c *Client) Get(ctx context.Context, id string) (*RolloutView, error) {
	var out RolloutView
	return &out, c.do(ctx, "GET", "/v1/rollouts/"+url.PathEscape(id), nil, &out)
}

// List returns every rollout (without histories), newest first; model ""
// means all models.
func (c *Client) List(ctx context.Context, model string) ([]RolloutView, error) {
	var out struct {
		Rollouts []RolloutView `json:"rollouts"`
	}
	path := "/v1/rollouts"
	if model != "" {
		path += "?model=" + url.QueryEscape(model)
	}
	return out.Rollouts, c.do(ctx, "GET", path, nil, &out)
}

// Operate pauses, resumes, promotes, rolls back or aborts a rollout.
func (c *Client) Operate(ctx context.Context, id string, op Operation, note string) (*RolloutView, error) {
	var out RolloutView
	return &out, c.do(ctx, "POST", "/v1/rollouts/"+url.PathEscape(id)+"/"+string(op), OperateRequest{Note: note}, &out)
}

// Report returns the rollout's report: one self-contained HTML page.
func (c *Client) Report(ctx context.Context, id string) ([]byte, error) {
	b, _, err := c.client().DoRaw(ctx, "GET", "/v1/rollouts/"+url.PathEscape(id)+"/report", nil)
	return b, err
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	return c.client().Do(ctx, method, path, in, out)
}

func (c *Client) client() *httpapi.Client {
	if a := c.api.Load(); a != nil {
		return a
	}
	c.api.CompareAndSwap(nil, &httpapi.Client{API: "rollout api", BaseURL: c.BaseURL, Token: c.Token, Actor: c.Actor, HTTP: c.HTTP})
	return c.api.Load()
}
