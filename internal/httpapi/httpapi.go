// Package httpapi holds what llmcanary's two JSON APIs — the control plane's
// management API and the analyzer's rollout API — share: bearer-token
// authorisation, strict JSON bodies, one error shape, and the client side.
package httpapi

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
)

// ErrorBody is every error response's body: {"error": {"code", "message"}}.
type ErrorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// WriteJSON answers with v as indented JSON.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// WriteError answers with an ErrorBody.
func WriteError(w http.ResponseWriter, status int, code, msg string) {
	var b ErrorBody
	b.Error.Code, b.Error.Message = code, msg
	WriteJSON(w, status, b)
}

// Bearer lets a request through to h only with `Authorization: Bearer
// <token>`, compared in constant time. An empty token lets nobody in.
func Bearer(token []byte, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || len(token) == 0 || subtle.ConstantTimeCompare([]byte(got), token) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="llmcanary"`)
			WriteError(w, http.StatusUnauthorized, "unauthorized", "a valid bearer token is required")
			return
		}
		h(w, r)
	}
}

// Decode reads a JSON body of at most maxBody bytes strictly: unknown fields
// and trailing data are errors, so a typo never passes as an empty change.
// On failure it has answered (400 or 413) and returns false.
func Decode(w http.ResponseWriter, r *http.Request, v any, maxBody int64) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.Decode(&struct{}{}) != io.EOF {
		err = errors.New("unexpected data after the JSON value")
	}
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			WriteError(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("body is larger than %d bytes", maxBody))
			return false
		}
		WriteError(w, http.StatusBadRequest, "malformed", "malformed JSON body: "+err.Error())
		return false
	}
	return true
}

// APIError is a non-2xx answer.
type APIError struct {
	API     string // which API answered, for the message
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s: %d %s: %s", e.API, e.Status, e.Code, e.Message)
}

// Client calls one of the APIs. Safe for concurrent use.
type Client struct {
	API string // name used in errors, e.g. "management api"
	// BaseURL is the API's base URL, or several separated by commas: the
	// replicas of a control plane, or the analyzers of which one leads.
	// A request goes to the one that last answered and moves on to the
	// next when that one is unreachable or answers 503 (unavailable, or
	// not the leader), which never applied the request. An answer that
	// may have been lost in transit is retried on another URL only for
	// methods that can be repeated (GET, PUT, DELETE).
	BaseURL string
	Token   string
	Actor   string // sent as X-Llmcanary-Actor, recorded in audit trails
	HTTP    *http.Client

	preferred atomic.Int32 // index in BaseURL of the last URL that answered
}

// As returns a client like c that names actor in its requests.
func (c *Client) As(actor string) *Client {
	n := &Client{API: c.API, BaseURL: c.BaseURL, Token: c.Token, Actor: actor, HTTP: c.HTTP}
	n.preferred.Store(c.preferred.Load())
	return n
}

// Do sends in as JSON (if not nil) and decodes a 2xx answer into out (if
// not nil); any other answer is an *APIError.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	_, err := c.DoHeader(ctx, method, path, in, out)
	return err
}

// DoHeader is Do that also returns the headers of a 2xx answer.
func (c *Client) DoHeader(ctx context.Context, method, path string, in, out any) (http.Header, error) {
	b, h, err := c.DoRaw(ctx, method, path, in)
	if err != nil {
		return nil, err
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return nil, fmt.Errorf("%s: decode answer: %w", c.API, err)
		}
	}
	return h, nil
}

// DoRaw sends in as JSON (if not nil) and returns a 2xx answer's body and
// headers as they came (an HTML report, say); any other answer is an
// *APIError.
func (c *Client) DoRaw(ctx context.Context, method, path string, in any) ([]byte, http.Header, error) {
	var payload []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, nil, err
		}
		payload = b
	}
	urls := strings.Split(c.BaseURL, ",")
	first := int(c.preferred.Load()) % len(urls)
	var err error
	for i := range urls {
		n := (first + i) % len(urls)
		var b []byte
		var h http.Header
		var retry bool
		b, h, retry, err = c.doOnce(ctx, method, strings.TrimRight(strings.TrimSpace(urls[n]), "/")+path, payload)
		if !retry || ctx.Err() != nil {
			if err == nil {
				c.preferred.Store(int32(n))
			}
			return b, h, err
		}
	}
	return nil, nil, err
}

// doOnce sends one request to url. retry says whether another URL may be
// tried: this one was not reached, or answered 503, or the answer was lost
// for a method that can be repeated.
func (c *Client) doOnce(ctx context.Context, method, url string, payload []byte) (b []byte, h http.Header, retry bool, err error) {
	var body io.Reader
	if payload != nil {
		body = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return nil, nil, false, err
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
	repeatable := method == http.MethodGet || method == http.MethodPut || method == http.MethodDelete
	resp, err := hc.Do(req)
	if err != nil {
		var op *net.OpError
		notSent := errors.As(err, &op) && op.Op == "dial"
		return nil, nil, notSent || repeatable, fmt.Errorf("%s: %w", c.API, err)
	}
	defer resp.Body.Close()
	b, err = io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, repeatable, fmt.Errorf("%s: %w", c.API, err)
	}
	if resp.StatusCode/100 != 2 {
		var eb ErrorBody
		_ = json.Unmarshal(b, &eb)
		return nil, nil, resp.StatusCode == http.StatusServiceUnavailable,
			&APIError{API: c.API, Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
	}
	return b, resp.Header, false, nil
}
