//go:build integration

package quality

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/extproc/chwriter/chwritertest"
	"github.com/llmcanary/llmcanary/internal/procs/chtest"
)

// reqTime is recent: feedback rates requests up to DefaultFeedbackMaxAge
// old.
var reqTime = time.Now().UTC().Add(-time.Hour).Truncate(time.Millisecond)

func feedbackFixture() []extproc.Record {
	return []extproc.Record{
		{RequestID: "r-up", Model: "m", Version: "v2", Time: reqTime, Status: 200},
		{RequestID: "r-score", Model: "m", Version: "v1", Time: reqTime.Add(time.Second), Status: 200, Forced: true},
		{RequestID: "r-down", Model: "m", Version: "v1", Time: reqTime.Add(2 * time.Second), Status: 200},
		{RequestID: "r-old", Model: "m", Version: "v1", Time: time.Now().Add(-DefaultFeedbackMaxAge - 24*time.Hour), Status: 200},
	}
}

type postResult struct {
	status int
	body   string
}

func post(t *testing.T, url, method, body string) postResult {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return postResult{resp.StatusCode, string(b)}
}

func TestFeedbackHandler(t *testing.T) {
	ch := chtest.Shared(t)
	store, conn := openStore(t, ch, feedbackFixture())
	store.lookupWait = 300 * time.Millisecond
	srv := httptest.NewServer(store.FeedbackHandler())
	defer srv.Close()

	// The cases run in order: later ones see the ratings earlier ones stored.
	cases := []struct {
		name, method, body string
		status             int
		errCode            string
	}{
		{"thumbs up is stored as 1", "POST", `{"request_id": "r-up", "rating": "up"}`, 201, ""},
		{"a score with a comment is stored", "POST", `{"request_id": "r-score", "score": 0.25, "comment": "half right"}`, 201, ""},
		{"thumbs down is stored as 0", "POST", `{"request_id": "r-down", "rating": "down"}`, 201, ""},
		{"a second rating of a request is rejected", "POST", `{"request_id": "r-up", "score": 0}`, 409, "already_rated"},
		{"an unknown request id is not found", "POST", `{"request_id": "nope", "rating": "up"}`, 404, "request_not_found"},
		{"a request older than the feedback age is not found", "POST", `{"request_id": "r-old", "rating": "up"}`, 404, "request_not_found"},
		{"malformed JSON", "POST", `{"request_id": "r-up", "rating": `, 400, "invalid_feedback"},
		{"a score above one", "POST", `{"request_id": "r-up", "score": 1.5}`, 400, "invalid_feedback"},
		{"a negative score", "POST", `{"request_id": "r-up", "score": -1}`, 400, "invalid_feedback"},
		{"a score that is not a number", "POST", `{"request_id": "r-up", "score": "1"}`, 400, "invalid_feedback"},
		{"both score and rating", "POST", `{"request_id": "r-up", "score": 1, "rating": "up"}`, 400, "invalid_feedback"},
		{"neither score nor rating", "POST", `{"request_id": "r-up"}`, 400, "invalid_feedback"},
		{"an unknown rating", "POST", `{"request_id": "r-up", "rating": "meh"}`, 400, "invalid_feedback"},
		{"no request id", "POST", `{"rating": "up"}`, 400, "invalid_feedback"},
		{"an unknown field", "POST", `{"request_id": "r-up", "stars": 5}`, 400, "invalid_feedback"},
		{"two JSON values", "POST", `{"request_id": "r-up", "rating": "up"} {}`, 400, "invalid_feedback"},
		{"a comment too long", "POST", `{"request_id": "r-up", "rating": "up", "comment": "` + strings.Repeat("x", MaxFeedbackComment+1) + `"}`, 400, "invalid_feedback"},
		{"GET is not allowed", "GET", "", 405, "method_not_allowed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := post(t, srv.URL, tc.method, tc.body)
			if got.status != tc.status {
				t.Fatalf("status %d (%s), want %d", got.status, got.body, tc.status)
			}
			if tc.errCode == "" {
				var fr FeedbackResponse
				if err := json.Unmarshal([]byte(got.body), &fr); err != nil || fr.Source != SourceFeedback || fr.Model != "m" {
					t.Fatalf("body %s (%v), want a stored feedback response", got.body, err)
				}
				return
			}
			var e apiError
			if err := json.Unmarshal([]byte(got.body), &e); err != nil || e.Error.Code != tc.errCode || e.Error.Message == "" || e.Error.Type == "" {
				t.Fatalf("body %s (%v), want an OpenAI-style error with code %s", got.body, err, tc.errCode)
			}
		})
	}

	want := []Score{
		{Time: reqTime.Add(2 * time.Second), RequestID: "r-down", Model: "m", Version: "v1", Score: 0, Source: SourceFeedback},
		{Time: reqTime.Add(time.Second), RequestID: "r-score", Model: "m", Version: "v1", Score: 0.25, Source: SourceFeedback, Forced: true, Comment: "half right"},
		{Time: reqTime, RequestID: "r-up", Model: "m", Version: "v2", Score: 1, Source: SourceFeedback},
	}
	got := storedScores(t, conn, store.Database())
	if len(got) != len(want) {
		t.Fatalf("stored %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("row %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestFeedbackWaitsForARequestRowStillOnItsWay(t *testing.T) {
	ch := chtest.Shared(t)
	store, conn := openStore(t, ch, nil)
	waiting := make(chan struct{})
	var once sync.Once
	store.missed = func(string) { once.Do(func() { close(waiting) }) }
	srv := httptest.NewServer(store.FeedbackHandler())
	defer srv.Close()

	done := make(chan postResult, 1)
	go func() { done <- post(t, srv.URL, "POST", `{"request_id": "late", "rating": "up"}`) }()
	<-waiting // the rating looked for its row, missed it and waits
	chwritertest.WriteRecords(t, ch, store.Database(), []extproc.Record{{RequestID: "late", Model: "m", Version: "v2", Time: time.Now(), Status: 200}})

	if got := <-done; got.status != http.StatusCreated {
		t.Fatalf("status %d (%s), want 201 once the row arrived", got.status, got.body)
	}
	if got := storedScores(t, conn, store.Database()); len(got) != 1 || got[0].RequestID != "late" || got[0].Version != "v2" {
		t.Fatalf("stored %+v", got)
	}
}

func TestFeedbackConcurrentRatingsOfOneRequestStoreOne(t *testing.T) {
	ch := chtest.Shared(t)
	store, conn := openStore(t, ch, feedbackFixture())
	srv := httptest.NewServer(store.FeedbackHandler())
	defer srv.Close()

	const n = 8
	results := make(chan int, n)
	for i := range n {
		go func() {
			body := `{"request_id": "r-up", "rating": "up"}`
			if i%2 == 1 {
				body = `{"request_id": "r-up", "rating": "down"}`
			}
			results <- post(t, srv.URL, "POST", body).status
		}()
	}
	created := 0
	for range n {
		switch s := <-results; s {
		case http.StatusCreated:
			created++
		case http.StatusConflict:
		default:
			t.Errorf("status %d, want 201 or 409", s)
		}
	}
	if created != 1 {
		t.Errorf("%d ratings accepted, want 1", created)
	}
	if got := storedScores(t, conn, store.Database()); len(got) != 1 {
		t.Fatalf("stored %+v, want one rating", got)
	}
}

func TestFeedbackWhenClickHouseIsDownIsUnavailable(t *testing.T) {
	ch := chtest.Own(t)
	store, _ := openStore(t, ch, feedbackFixture())
	srv := httptest.NewServer(store.FeedbackHandler())
	defer srv.Close()
	if err := ch.Kill(); err != nil {
		t.Fatal(err)
	}
	got := post(t, srv.URL, "POST", `{"request_id": "r-up", "rating": "up"}`)
	if got.status != http.StatusServiceUnavailable {
		t.Fatalf("status %d (%s), want 503", got.status, got.body)
	}
}
