package analyzer

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func newAPIServer(t *testing.T) (*rig, *httptest.Server) {
	t.Helper()
	r := newRig(t)
	api := NewAPI(r.runner, "secret", nil)
	api.Mount("POST /v1/feedback", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusAccepted)
	}))
	srv := httptest.NewServer(api.Handler())
	t.Cleanup(srv.Close)
	return r, srv
}

func call(t *testing.T, srv *httptest.Server, method, path, token, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAPI(t *testing.T) {
	tests := []struct {
		name, method, path, token, body string
		status                          int
		contains                        string
	}{
		{"a missing token is refused", "GET", "/v1/rollouts", "", "", 401, `"unauthorized"`},
		{"a wrong token is refused", "GET", "/v1/rollouts", "nope", "", 401, `"unauthorized"`},
		{"a rollout starts", "POST", "/v1/rollouts", "secret", `{"model":"m","canary":"v2"}`, 201, `"risk": "medium"`},
		{"an A/B test starts at its split", "POST", "/v1/experiments", "secret", `{"model":"m","canary":"v2","split":30}`, 201, `"split": 30`},
		{"one candidate is a two-arm A/B test", "POST", "/v1/experiments", "secret", `{"model":"m","candidates":["v2"],"split":30}`, 201, `"canary": "v2"`},
		{"an unknown candidate is invalid", "POST", "/v1/experiments", "secret", `{"model":"m","candidates":["v2","v9"]}`, 400, `has no version \"v9\"`},
		{"several candidates need an A/B test", "POST", "/v1/rollouts", "secret", `{"model":"m","candidates":["v2","v3"]}`, 400, `need mode abtest`},
		{"an unknown field is malformed", "POST", "/v1/rollouts", "secret", `{"model":"m","canary":"v2","canry":"x"}`, 400, `"malformed"`},
		{"an unknown version is invalid", "POST", "/v1/rollouts", "secret", `{"model":"m","canary":"v9"}`, 400, `has no version \"v9\"`},
		{"an unknown model is not found", "POST", "/v1/rollouts", "secret", `{"model":"x","canary":"v2"}`, 404, `"not_found"`},
		{"an unknown rollout is not found", "GET", "/v1/rollouts/r-nope", "secret", "", 404, `"not_found"`},
		{"an unknown action is not found", "POST", "/v1/rollouts/r-nope/explode", "secret", "", 404, `no such action`},
		{"a mounted handler answers behind the token", "POST", "/v1/feedback", "secret", `{}`, 202, ""},
		{"a mounted handler needs the token", "POST", "/v1/feedback", "", `{}`, 401, ""},
		{"an unknown path is not found", "GET", "/v2/x", "secret", "", 404, `no such endpoint`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, srv := newAPIServer(t)
			status, body := call(t, srv, tc.method, tc.path, tc.token, tc.body)
			if status != tc.status || !strings.Contains(body, tc.contains) {
				t.Fatalf("%d %s, want %d containing %s", status, body, tc.status, tc.contains)
			}
			if status >= 400 {
				var eb ErrorBody
				if err := json.Unmarshal([]byte(body), &eb); err != nil || eb.Error.Code == "" || eb.Error.Message == "" {
					t.Errorf("error body %s", body)
				}
			}
		})
	}
}

func TestAPIClientDrivesARollout(t *testing.T) {
	r, srv := newAPIServer(t)
	c := &Client{BaseURL: srv.URL, Token: "secret", Actor: "carol"}
	ctx := context.Background()
	ro, err := c.Start(ctx, StartRequest{Model: "m", Canary: "v2"})
	if err != nil {
		t.Fatal(err)
	}
	if ro.Progress.Stage != 1 || ro.Progress.Weight != 20 || ro.Progress.MinSamples != 2000 {
		t.Fatalf("progress %+v", ro.Progress)
	}
	if _, err := c.Start(ctx, StartRequest{Model: "m", Canary: "v2"}); !isStatus(err, 409) {
		t.Fatalf("second start: %v", err)
	}
	r.source.m = window(3, 800, 200, testArm(), testArm())
	if _, err := r.runner.Step(ctx, ro.ID); err != nil {
		t.Fatal(err)
	}
	got, err := c.Get(ctx, ro.ID)
	if err != nil || got.Last == nil || got.Progress.Samples != 200 || len(got.History) != 2 {
		t.Fatalf("get: %v %+v", err, got)
	}
	list, err := c.List(ctx, "m")
	if err != nil || len(list) != 1 || list[0].History != nil {
		t.Fatalf("list: %v %+v", err, list)
	}
	done, err := c.Operate(ctx, ro.ID, OpRollback, "bad answers reported")
	if err != nil || done.Status != RolloutRolledBack || !strings.Contains(done.History[len(done.History)-1].Reason, "rollback by carol") {
		t.Fatalf("rollback: %v %+v", err, done)
	}
	if _, err := c.Operate(ctx, ro.ID, OpPromote, ""); !isStatus(err, 409) {
		t.Fatalf("promote after rollback: %v", err)
	}
}

func isStatus(err error, status int) bool {
	var e *APIError
	return errors.As(err, &e) && e.Status == status
}

func TestAPIStandbyRefusesWritesNamingTheLeaderAndServesReads(t *testing.T) {
	r, srv := newAPIServer(t)
	ro := r.start(t)
	r.runner.Leading = func(context.Context) error {
		return &NotLeaderError{Leader: Member{ID: "a", URL: "http://leader:18090"}}
	}
	for path, body := range map[string]string{"/v1/rollouts": `{"model":"m","canary":"v2"}`, "/v1/rollouts/" + ro.ID + "/pause": `{}`} {
		req, _ := http.NewRequest("POST", srv.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer secret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(HeaderLeader) != "http://leader:18090" || !strings.Contains(string(b), `"not_leader"`) {
			t.Errorf("POST %s on a standby: %d leader %q %s, want 503 not_leader naming http://leader:18090", path, resp.StatusCode, resp.Header.Get(HeaderLeader), b)
		}
	}
	if got, _ := r.runner.Store.Get(ro.ID); got.Status != RolloutRunning || r.traffic.count() != 1 {
		t.Errorf("a refused write changed something: %s, %d weight changes", got.Status, r.traffic.count())
	}
	if status, body := call(t, srv, "GET", "/v1/rollouts/"+ro.ID, "secret", ""); status != 200 || !strings.Contains(body, ro.ID) {
		t.Errorf("a read on a standby: %d %s", status, body)
	}
}
