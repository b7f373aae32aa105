package xds

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

const testToken = "test-token"

var quiet = slog.New(slog.DiscardHandler)

func newTestAPI(t *testing.T, dir string) (*httptest.Server, *StateStore, *Publisher) {
	t.Helper()
	st, err := OpenStateStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	pub := NewPublisher(DefaultGateway(), quiet)
	if err := pub.Publish(st.State()); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(NewAPI(st, pub, testToken, quiet).Handler())
	t.Cleanup(srv.Close)
	return srv, st, pub
}

func call(t *testing.T, srv *httptest.Server, method, path, token, body string, hdr ...string) (int, string) {
	t.Helper()
	return callURL(t, method, srv.URL+path, token, body, hdr...)
}

// callURL makes one API call to url and returns the status and body.
func callURL(t *testing.T, method, url, token, body string, hdr ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

const llamaModel = `{
  "stable": "v1",
  "versions": [
    {"name": "v1", "endpoints": ["127.0.0.1:8001"], "metadata": {"base_model": "llama-3-8b", "price_input_per_1k": 0.5}},
    {"name": "v2", "endpoints": ["127.0.0.1:8002"], "metadata": {"base_model": "llama-3-8b"}}
  ],
  "weights": {"v1": 100}
}`

func TestAPIRejectsBadChangesAndKeepsState(t *testing.T) {
	srv, st, pub := newTestAPI(t, t.TempDir())
	if code, body := call(t, srv, "PUT", "/v1/models/llama", testToken, llamaModel); code != 200 {
		t.Fatalf("create model: %d %s", code, body)
	}
	before := st.State()

	cases := []struct {
		name       string
		method     string
		path       string
		token      string
		body       string
		wantStatus int
		wantInBody string
	}{
		{"missing credential", "PUT", "/v1/models/llama/weights", "", `{"weights":{"v1":50,"v2":50}}`, 401, "bearer token"},
		{"wrong credential", "PUT", "/v1/models/llama/weights", "nope", `{"weights":{"v1":50,"v2":50}}`, 401, "bearer token"},
		{"reading needs a credential too", "GET", "/v1/state", "", ``, 401, "bearer token"},
		{"malformed JSON", "PUT", "/v1/models/llama/weights", testToken, `{"weights":{"v1":`, 400, "malformed JSON"},
		{"unknown field is a typo, not an empty change", "PUT", "/v1/models/llama/weights", testToken, `{"wieghts":{"v1":100}}`, 400, "unknown field"},
		{"unknown version", "PUT", "/v1/models/llama/weights", testToken, `{"weights":{"v1":90,"v9":10}}`, 400, `unknown version "v9"`},
		{"negative weight", "PUT", "/v1/models/llama/weights", testToken, `{"weights":{"v1":110,"v2":-10}}`, 400, "percentages from 0 to 100"},
		{"all zero", "PUT", "/v1/models/llama/weights", testToken, `{"weights":{"v1":0,"v2":0}}`, 400, "add up to 0, not 100"},
		{"weights that do not add up", "PUT", "/v1/models/llama/weights", testToken, `{"weights":{"v1":90,"v2":5}}`, 400, "add up to 95, not 100"},
		{"finer than a basis point", "PUT", "/v1/models/llama/weights", testToken, `{"weights":{"v1":99.995,"v2":0.005}}`, 400, "at most two decimals"},
		{"unknown model", "PUT", "/v1/models/gpt-9/weights", testToken, `{"weights":{"v1":100}}`, 404, `model "gpt-9" does not exist`},
		{"stable must exist", "PUT", "/v1/models/llama/weights", testToken, `{"weights":{"v1":100},"stable":"v7"}`, 400, `stable version "v7"`},
		{"version for an unknown model", "PUT", "/v1/models/gpt-9/versions/v1", testToken, `{"endpoints":["127.0.0.1:1"]}`, 404, "does not exist"},
		{"endpoint without port", "PUT", "/v1/models/llama/versions/v3", testToken, `{"endpoints":["127.0.0.1"]}`, 400, "not host:port"},
		{"negative replicas", "PUT", "/v1/models/llama/versions/v3", testToken, `{"endpoints":["127.0.0.1:1"],"metadata":{"replicas":-1}}`, 400, "replicas is -1"},
		{"negative GPU price", "PUT", "/v1/models/llama/versions/v3", testToken, `{"endpoints":["127.0.0.1:1"],"metadata":{"price_per_gpu_hour":-2}}`, 400, "price_per_gpu_hour is -2"},
		{"negative request rate", "PUT", "/v1/models/llama", testToken, `{"stable":"v1","versions":[{"name":"v1","endpoints":["127.0.0.1:1"]}],"weights":{"v1":100},"request_rate_rps":-5}`, 400, "request_rate_rps is -5"},
		{"cohorts of an unknown model", "PUT", "/v1/models/gpt-9/cohorts", testToken, `{"opt_in":{"cohorts":["internal"]}}`, 404, "does not exist"},
		{"deleting the stable version", "DELETE", "/v1/models/llama/versions/v1", testToken, ``, 409, "stable version"},
		{"stale revision", "PUT", "/v1/models/llama/weights", testToken, `{"weights":{"v1":100}}`, 412, "expected revision 999"},
		{"body names another model", "PUT", "/v1/models/llama", testToken, `{"name":"other","stable":"v1","versions":[{"name":"v1","endpoints":["127.0.0.1:1"]}],"weights":{"v1":100}}`, 400, "path names"},
		{"unknown endpoint", "POST", "/v1/rollouts", testToken, `{}`, 404, "no such endpoint"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var hdr []string
			if c.wantStatus == 412 {
				hdr = []string{"If-Match", `"999"`}
			}
			code, body := call(t, srv, c.method, c.path, c.token, c.body, hdr...)
			var eb ErrorBody
			if err := json.Unmarshal([]byte(body), &eb); err != nil || eb.Error.Message == "" {
				t.Fatalf("error body is not {error:{code,message}}: %s", body)
			}
			if code != c.wantStatus || !strings.Contains(eb.Error.Message, c.wantInBody) {
				t.Fatalf("got %d %q; want %d containing %q", code, eb.Error.Message, c.wantStatus, c.wantInBody)
			}
			after := st.State()
			if after.Revision != before.Revision {
				t.Fatalf("rejected change moved the revision from %d to %d", before.Revision, after.Revision)
			}
			if pub.Published() != before.Revision {
				t.Fatalf("rejected change was published: %d", pub.Published())
			}
		})
	}
}

func TestAPIWeightChangeIsVersionedAndPublished(t *testing.T) {
	srv, st, pub := newTestAPI(t, t.TempDir())
	call(t, srv, "PUT", "/v1/models/llama", testToken, llamaModel)
	rev := st.State().Revision
	code, body := call(t, srv, "PUT", "/v1/models/llama/weights", testToken, `{"weights":{"v1":95,"v2":5}}`, "If-Match", `"`+itoa(rev)+`"`)
	if code != 200 {
		t.Fatalf("set weights: %d %s", code, body)
	}
	s := st.State()
	if s.Revision != rev+1 || s.Models["llama"].Weights["v2"] != 5 {
		t.Fatalf("state after change: rev %d weights %v", s.Revision, s.Models["llama"].Weights)
	}
	if pub.Published() != s.Revision {
		t.Fatalf("published %d, want %d", pub.Published(), s.Revision)
	}
	changes, _ := st.Changes()
	last := changes[len(changes)-1]
	if last.Revision != s.Revision || !strings.Contains(last.Summary, "v2=5%") {
		t.Fatalf("audit trail does not record the change: %+v", last)
	}
}

func TestAPIModelNamesWithSlashes(t *testing.T) {
	srv, st, _ := newTestAPI(t, t.TempDir())
	code, body := call(t, srv, "PUT", "/v1/models/meta-llama%2FLlama-3-8B", testToken, llamaModel)
	if code != 200 {
		t.Fatalf("create: %d %s", code, body)
	}
	if _, ok := st.State().Models["meta-llama/Llama-3-8B"]; !ok {
		t.Fatalf("model with a slash not stored under its name: %v", st.State().ModelNames())
	}
	if code, body := call(t, srv, "GET", "/v1/models/meta-llama%2FLlama-3-8B", testToken, ""); code != 200 {
		t.Fatalf("get: %d %s", code, body)
	}
}

func TestAPINewVersionJoinsWithoutTrafficAndLeavesOnlyWhenDrained(t *testing.T) {
	srv, st, _ := newTestAPI(t, t.TempDir())
	call(t, srv, "PUT", "/v1/models/llama", testToken, llamaModel)
	if code, body := call(t, srv, "PUT", "/v1/models/llama/versions/v3", testToken, `{"endpoints":["127.0.0.1:8003"]}`); code != 200 {
		t.Fatalf("add version: %d %s", code, body)
	}
	if w := st.State().Models["llama"].Weights["v3"]; w != 0 {
		t.Fatalf("new version got weight %v, want 0", w)
	}
	call(t, srv, "PUT", "/v1/models/llama/weights", testToken, `{"weights":{"v1":90,"v3":10}}`)
	if code, _ := call(t, srv, "DELETE", "/v1/models/llama/versions/v3", testToken, ""); code != 409 {
		t.Fatalf("deleting a version with traffic: %d, want 409", code)
	}
	call(t, srv, "PUT", "/v1/models/llama/weights", testToken, `{"weights":{"v1":100}}`)
	if code, body := call(t, srv, "DELETE", "/v1/models/llama/versions/v3", testToken, ""); code != 200 {
		t.Fatalf("delete drained version: %d %s", code, body)
	}
	if _, ok := st.State().Models["llama"].Version("v3"); ok {
		t.Fatal("version still present after delete")
	}
}

func itoa(n uint64) string { b, _ := json.Marshal(n); return string(b) }

// TestOpenAPIDocumentsEveryEndpointTheAPIServes keeps xds/openapi.yaml and
// the handler in step: every documented path and method is served (not the
// catch-all 404 or a 405).
func TestOpenAPIDocumentsEveryEndpointTheAPIServes(t *testing.T) {
	raw, err := os.ReadFile("openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Paths map[string]map[string]any `json:"paths"`
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	srv, _, _ := newTestAPI(t, t.TempDir())
	n := 0
	for path, ops := range doc.Paths {
		concrete := strings.NewReplacer("{model}", "llama", "{version}", "v1").Replace(path)
		for method := range ops {
			if method == "parameters" {
				continue
			}
			n++
			code, body := call(t, srv, strings.ToUpper(method), concrete, testToken, "{}")
			if code == http.StatusMethodNotAllowed || strings.Contains(body, "no such endpoint") {
				t.Errorf("%s %s is documented but not served (%d %s)", strings.ToUpper(method), path, code, body)
			}
		}
	}
	if n < 10 {
		t.Fatalf("only %d operations documented", n)
	}
}

func TestAPIWeightChangeNoEnvoyServesYetSaysSoInTheAnswer(t *testing.T) {
	srv, st, _ := newTestAPI(t, t.TempDir())
	call(t, srv, "PUT", "/v1/models/llama", testToken, llamaModel)
	c := &Client{BaseURL: srv.URL, Token: testToken}
	start := time.Now()
	m, applied, err := c.SetWeightsWait(context.Background(), "llama", map[string]float64{"v1": 100}, "", 200*time.Millisecond)
	if err != nil || m.Weights["v1"] != 100 {
		t.Fatalf("set weights: %+v %v", m, err)
	}
	// The change stands, but nothing serves it: the answer must not let a
	// caller believe it is in force.
	if applied.Revision != st.State().Revision || applied.Connected != 0 || applied.Applied != 0 || applied.InForce() {
		t.Fatalf("answer says %+v (in force %v), want revision %d served by 0 of 0", applied, applied.InForce(), st.State().Revision)
	}
	if waited := time.Since(start); waited < 200*time.Millisecond {
		t.Fatalf("answered after %v without an Envoy; it may wait up to the 200 ms asked", waited)
	}
	if code, body := call(t, srv, "PUT", "/v1/models/llama/weights?wait=1h", testToken, `{"weights":{"v1":100}}`); code != 400 || !strings.Contains(body, "wait") {
		t.Fatalf("wait beyond the cap: %d %s", code, body)
	}
}

// unreachableStore is a hand-written Store whose backend is away: it has
// a state to read and refuses every write and audit read.
type unreachableStore struct{ StateStore }

func (*unreachableStore) Update(uint64, string, string, func(*State) error, func(*State) (func() error, error)) (*State, error) {
	return nil, fmt.Errorf("%w: etcd: context deadline exceeded", ErrUnavailable)
}

func (*unreachableStore) Changes() ([]Change, error) {
	return nil, fmt.Errorf("%w: etcd: context deadline exceeded", ErrUnavailable)
}

func TestAPIAnswers503WhileTheStoreIsUnreachable(t *testing.T) {
	st := &unreachableStore{StateStore{state: &State{Models: map[string]*Model{}}}}
	srv := httptest.NewServer(NewAPI(st, NewPublisher(DefaultGateway(), quiet), testToken, quiet).Handler())
	defer srv.Close()
	for _, c := range []struct{ method, path, body string }{
		{"PUT", "/v1/models/llama", llamaModel},
		{"GET", "/v1/changes", ""},
	} {
		if code, body := call(t, srv, c.method, c.path, testToken, c.body); code != http.StatusServiceUnavailable || !strings.Contains(body, "unavailable") {
			t.Errorf("%s %s: %d %s, want 503 unavailable", c.method, c.path, code, body)
		}
	}
	if code, _ := call(t, srv, "GET", "/v1/state", testToken, ""); code != http.StatusOK {
		t.Errorf("GET /v1/state: %d, want the last state served", code)
	}
}
