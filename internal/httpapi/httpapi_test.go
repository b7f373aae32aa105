package httpapi

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

// closedURL is the URL of a loopback port nobody listens on.
func closedURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "http://" + l.Addr().String()
	l.Close()
	return u
}

// server answers every request with status and counts what it got.
func server(t *testing.T, status int, code string) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		if status/100 != 2 {
			WriteError(w, status, code, "answer of a test server")
			return
		}
		WriteJSON(w, status, map[string]string{"from": r.Host})
	}))
	t.Cleanup(s.Close)
	return s, &n
}

func TestAnUnreachableURLFailsOverToTheNextAndTheNextIsKept(t *testing.T) {
	live, hits := server(t, 200, "")
	c := &Client{API: "test api", BaseURL: closedURL(t) + "/," + live.URL + "/"}
	for range 3 {
		if err := c.Do(context.Background(), "POST", "/v1/x", map[string]int{"a": 1}, nil); err != nil {
			t.Fatalf("a POST with one live URL of two failed: %v", err)
		}
	}
	if got := c.preferred.Load(); got != 1 {
		t.Errorf("preferred URL %d, want the live one (1)", got)
	}
	if hits.Load() != 3 {
		t.Errorf("the live server got %d requests, want 3", hits.Load())
	}
}

func TestA503MovesToTheNextURLAndOtherErrorsDoNot(t *testing.T) {
	standby, standbyHits := server(t, http.StatusServiceUnavailable, "not_leader")
	leader, leaderHits := server(t, 200, "")
	c := &Client{API: "test api", BaseURL: standby.URL + "," + leader.URL}
	if err := c.Do(context.Background(), "POST", "/v1/rollouts", nil, nil); err != nil {
		t.Fatalf("the leader after a standby: %v", err)
	}
	if standbyHits.Load() != 1 || leaderHits.Load() != 1 {
		t.Errorf("standby got %d, leader %d requests; want 1 and 1", standbyHits.Load(), leaderHits.Load())
	}

	refusing, _ := server(t, http.StatusConflict, "conflict")
	other, otherHits := server(t, 200, "")
	c = &Client{API: "test api", BaseURL: refusing.URL + "," + other.URL}
	err := c.Do(context.Background(), "PUT", "/v1/x", nil, nil)
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusConflict {
		t.Fatalf("a 409 came back as %v; want the APIError itself", err)
	}
	if otherHits.Load() != 0 {
		t.Error("a request refused with 409 was sent again to another URL")
	}
}

func TestEveryURLUnreachableReturnsTheLastError(t *testing.T) {
	c := &Client{API: "test api", BaseURL: closedURL(t) + "," + closedURL(t)}
	err := c.Do(context.Background(), "GET", "/v1/x", nil, nil)
	if err == nil {
		t.Fatal("no error with every URL closed")
	}
}

func TestAsKeepsThePreferredURLAndChangesOnlyTheActor(t *testing.T) {
	var actor atomic.Value
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		actor.Store(r.Header.Get("X-Llmcanary-Actor"))
		WriteJSON(w, 200, nil)
	}))
	defer s.Close()
	c := &Client{API: "test api", BaseURL: closedURL(t) + "," + s.URL, Actor: "analyzer"}
	if err := c.Do(context.Background(), "GET", "/", nil, nil); err != nil {
		t.Fatal(err)
	}
	a := c.As("alice")
	if a.preferred.Load() != 1 {
		t.Errorf("As forgot the preferred URL")
	}
	if err := a.Do(context.Background(), "GET", "/", nil, nil); err != nil || actor.Load() != "alice" {
		t.Errorf("As: actor %v, err %v", actor.Load(), err)
	}
	if c.Actor != "analyzer" {
		t.Errorf("As changed the original client's actor to %q", c.Actor)
	}
}
