package analyzer

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// Client calls the rollout API. The CLI and the tests use it. Safe for
// concurrent use.
type Client struct {
	BaseURL string // e.g. http://127.0.0.1:18090
	Token   string
	Actor   string // recorded in the rollout's history
	HTTP    *http.Client
}

// APIError is a non-2xx answer of the rollout API.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("rollout api: %d %s: %s", e.Status, e.Code, e.Message)
}

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

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	req.Header.Set("Content-Type", "application/json")
	if c.Actor != "" {
		req.Header.Set("X-Llmcanary-Actor", c.Actor)
	}
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("rollout api: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("rollout api: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var eb ErrorBody
		_ = json.Unmarshal(b, &eb)
		return &APIError{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("rollout api: decode answer: %w", err)
		}
	}
	return nil
}
