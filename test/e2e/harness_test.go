//go:build integration

// Package e2e holds llmcanary's end-to-end tests: a real Envoy routing real
// HTTP requests to simulated pools by the weights the control plane
// publishes over xDS. They need Envoy (and some ClickHouse) installed: run
// them with `make test`, which installs what is missing. A missing binary
// fails the test with a message that says how to install it.
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/internal/local"
	"github.com/llmcanary/llmcanary/internal/procs"
	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/sim"
	"github.com/llmcanary/llmcanary/xds"
)

const model = "llama-3-8b"

// fleet is a local stack with a stable and a canary pool of one model.
type fleet struct {
	*local.Local
	stable, canary *local.SimServer
	client         *http.Client
	wasm           bool
}

type fleetOptions struct {
	envoys         int
	stableW        float64
	stable, canary sim.Profile
	stack          local.Options
	// wasm adds the proxy-wasm filter: the model then comes from the body.
	wasm bool
}

func startFleet(t testing.TB, o fleetOptions) *fleet {
	t.Helper()
	if _, err := procs.EnvoyBinary(); err != nil {
		t.Fatalf("end-to-end tests need a real Envoy: %v", err)
	}
	if o.stable.Version == "" {
		o.stable = sim.Profile{Version: "v1", Model: model, Seed: 1}
	}
	if o.canary.Version == "" {
		o.canary = sim.Profile{Version: "v2", Model: model, Seed: 2}
	}
	if o.stableW == 0 {
		o.stableW = 90
	}
	ctx := context.Background()
	so := o.stack
	so.Dir, so.Envoys = t.TempDir(), max(o.envoys, 1)
	if o.wasm && so.Wasm == nil {
		so.Wasm = &xds.WasmOptions{Path: wasmModule(t), HashKey: "e2e-fleet-hash-key-0123456789"}
	}
	l, err := local.Start(ctx, so)
	if err != nil {
		t.Fatal(err)
	}
	f := &fleet{Local: l, wasm: so.Wasm != nil, client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 30 * time.Second}}
	t.Cleanup(func() {
		if t.Failed() {
			for _, e := range l.Envoys {
				t.Logf("%s log tail:\n%s", e.Proc.Name, e.Proc.Tail(20))
				if dst := os.Getenv("LLMCANARY_KEEP_LOGS"); dst != "" {
					b, _ := os.ReadFile(e.Proc.LogPath)
					os.WriteFile(filepath.Join(dst, t.Name()+"-"+filepath.Base(e.Proc.LogPath)), b, 0o644)
				}
			}
		}
		l.Stop()
	})
	if f.stable, err = local.StartSim(o.stable); err != nil {
		t.Fatal(err)
	}
	l.OnStop(f.stable.Stop)
	if f.canary, err = local.StartSim(o.canary); err != nil {
		t.Fatal(err)
	}
	l.OnStop(f.canary.Stop)
	_, err = l.API.PutModel(ctx, &xds.Model{
		Name:   model,
		Stable: o.stable.Version,
		Versions: []xds.Version{
			{Name: o.stable.Version, Endpoints: []string{f.stable.Addr}, Metadata: xds.VersionMetadata{BaseModel: model, PriceInputPer1K: 0.5, PriceOutputPer1K: 1.5}},
			{Name: o.canary.Version, Endpoints: []string{f.canary.Addr}, Metadata: xds.VersionMetadata{BaseModel: model, PriceInputPer1K: 0.5, PriceOutputPer1K: 1.5}},
		},
		Weights: map[string]float64{o.stable.Version: o.stableW, o.canary.Version: 100 - o.stableW},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return f
}

// answer is what one request through the gateway returned.
type answer struct {
	status   int
	version  string // x-llmcanary-version, as Envoy announced it
	servedBy string // x-sim-served-by, as the pool said
	saw      string // x-llmcanary-* request headers the pool received
	body     string
	header   http.Header
}

type request struct {
	method  string // default POST
	gateway int    // which Envoy
	bucket  string
	headers map[string]string
	body    string // default: a small chat completion for model
	path    string
}

func (f *fleet) do(t *testing.T, r request) answer {
	t.Helper()
	a, err := f.try(r)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func (f *fleet) try(r request) (answer, error) {
	if r.body == "" {
		r.body = `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}],"max_tokens":4}`
	}
	if r.path == "" {
		r.path = "/v1/chat/completions"
	}
	if r.method == "" {
		r.method = "POST"
	}
	req, err := http.NewRequest(r.method, "http://"+f.Gateway[r.gateway]+r.path, strings.NewReader(r.body))
	if err != nil {
		return answer{}, err
	}
	req.Header.Set("content-type", "application/json")
	// Without the wasm filter, which reads the model from the body, the
	// route matches it on this header.
	if !f.wasm {
		req.Header.Set(wire.HeaderModel, model)
	}
	if r.bucket != "" {
		req.Header.Set(wire.HeaderBucket, r.bucket)
	}
	for k, v := range r.headers {
		req.Header.Set(k, v)
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{}, err
	}
	return answer{status: resp.StatusCode, version: resp.Header.Get(wire.HeaderVersion), servedBy: resp.Header.Get(wire.HeaderServedBy), saw: resp.Header.Get(sim.HeaderSawHeaders), body: string(b), header: resp.Header}, nil
}

// parallel runs n requests on 8 workers and returns the answers in order.
func (f *fleet) parallel(t *testing.T, n int, mk func(i int) request) []answer {
	t.Helper()
	out := make([]answer, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				out[i], errs[i] = f.try(mk(i))
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	return out
}

// binomialBounds returns the interval that holds the count of successes in
// n trials of probability p with the given two-sided z (3.29 for 99.9%).
func binomialBounds(n int, p, z float64) (lo, hi float64) {
	mean := float64(n) * p
	sd := math.Sqrt(float64(n) * p * (1 - p))
	return math.Max(0, mean-z*sd), math.Min(float64(n), mean+z*sd)
}

// bucketFor returns a bucket value whose position bucket % TotalWeight is pos.
func bucketFor(pos, salt uint64) string {
	return fmt.Sprint(salt*xds.TotalWeight + pos)
}

// sseTokens reads an SSE body and returns the content of each event, with
// the time each arrived.
func sseTokens(r io.Reader) (tokens []string, at []time.Time, err error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		var ch struct {
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(data), &ch); err != nil {
			return nil, nil, fmt.Errorf("bad event %q: %w", data, err)
		}
		if len(ch.Choices) > 0 && ch.Choices[0].Delta.Content != "" {
			tokens = append(tokens, ch.Choices[0].Delta.Content)
			at = append(at, time.Now())
		}
	}
	return tokens, at, sc.Err()
}

func jsonDecode(resp *http.Response, v any) error { return json.NewDecoder(resp.Body).Decode(v) }

// wasmModule returns the filter module (see procs.WasmModule).
func wasmModule(t testing.TB) string {
	t.Helper()
	p, err := procs.WasmModule()
	if err != nil {
		t.Fatal(err)
	}
	return p
}
