//go:build integration

package envoytest

import (
	"context"
	"errors"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/extproc/envoyconfig"
	"github.com/llmcanary/llmcanary/internal/wire"
)

// client keeps a connection per request in flight, as a load balancer in
// front of Envoy does, so benchmarks measure requests, not handshakes.
var client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

// completion sends one chat request with the upstream's behaviour in
// headers and reads the whole answer.
func completion(ctx context.Context, url string, hdr map[string]string) (int, string, error) {
	code, body, _, err := completionFull(ctx, url, hdr)
	return code, body, err
}

// completionFull is completion that also returns the served version
// (the response's x-llmcanary-version).
func completionFull(ctx context.Context, url string, hdr map[string]string) (code int, body, version string, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/chat/completions",
		strings.NewReader(`{"model":"llama","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		return 0, "", "", err
	}
	req.Header.Set("content-type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header.Get(wire.HeaderVersion), err
}

// fastClose keeps the deferred close of abandoned streams short, so the
// records of reset and cancelled requests arrive quickly.
var fastClose = envoyconfig.FilterOptions{DeferredCloseTimeout: 300 * time.Millisecond}

func TestEnvoyStreamedRequestsAreTimedPerToken(t *testing.T) {
	const (
		n      = 12
		ttftMs = 60
		itlMs  = 15
		tokens = 9
	)
	svc := startService(t)
	env := startEnvoy(t, startUpstream(t), svc.addr, fastClose)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			hdr := map[string]string{
				hdrTTFT: strconv.Itoa(ttftMs), hdrITL: strconv.Itoa(itlMs), hdrTokens: strconv.Itoa(tokens),
				wire.HeaderBucket: strconv.Itoa(1000 + i),
			}
			if i%2 == 1 {
				hdr[hdrMode] = "usage"
			}
			code, body, err := completion(ctx, env.withURL, hdr)
			if err == nil && (code != 200 || !strings.Contains(body, "[DONE]")) {
				err = errors.New("request " + strconv.Itoa(i) + ": status " + strconv.Itoa(code))
			}
			errs <- err
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	recs := svc.sink.wait(t, n, 10*time.Second)
	seen := map[uint64]bool{}
	for _, r := range recs {
		seen[r.Bucket] = true
		usage := r.TokensFromUsage
		if r.Failure != "" || r.Status != 200 || !r.Streamed || r.CompletionTokens != tokens {
			t.Errorf("bucket %d: failure %q status %d streamed %v tokens %d, want a clean streamed 200 with %d tokens",
				r.Bucket, r.Failure, r.Status, r.Streamed, r.CompletionTokens, tokens)
		}
		if r.Model != metaModel || r.Version != headerVersion || r.Cluster != upstreamCluster || r.Path != "/v1/chat/completions" || r.RequestID == "" {
			t.Errorf("bucket %d: model %q version %q cluster %q path %q id %q", r.Bucket, r.Model, r.Version, r.Cluster, r.Path, r.RequestID)
		}
		// TTFT runs from Envoy's request.time to the first token's arrival
		// at the service: it must match, within a few ms, the moment the
		// upstream flushed that token, and can never undercut the injected
		// TTFT. Likewise the mean gap matches the upstream's.
		v, ok := tokenWrites.Load(strconv.FormatUint(r.Bucket, 10))
		if !ok {
			t.Errorf("bucket %d: the upstream never saw it", r.Bucket)
			continue
		}
		tw := v.(*[2]time.Time)
		realTTFT := float64(tw[0].Sub(r.Time)) / float64(time.Millisecond)
		realITL := float64(tw[1].Sub(tw[0])) / float64(time.Millisecond) / (tokens - 1)
		if r.TTFTMs < ttftMs || math.Abs(r.TTFTMs-realTTFT) > 5 {
			t.Errorf("bucket %d: TTFT %.1f ms, want ≥ %d and within 5 ms of the upstream's %.1f ms", r.Bucket, r.TTFTMs, ttftMs, realTTFT)
		}
		if r.ITLMeanMs < itlMs || math.Abs(r.ITLMeanMs-realITL) > 3 || r.ITLMaxMs < itlMs {
			t.Errorf("bucket %d: ITL mean %.1f max %.1f ms, want ≥ %d and within 3 ms of the upstream's %.1f ms",
				r.Bucket, r.ITLMeanMs, r.ITLMaxMs, itlMs, realITL)
		}
		if r.TotalMs < ttftMs+(tokens-1)*itlMs {
			t.Errorf("bucket %d: total %.1f ms shorter than the stream", r.Bucket, r.TotalMs)
		}
		wantCost := float64(tokens) / 1000 * priceOut
		if usage {
			wantCost += 100.0 / 1000 * priceIn
			if r.PromptTokens != 100 {
				t.Errorf("bucket %d: prompt tokens %d, want 100 from usage", r.Bucket, r.PromptTokens)
			}
		}
		if math.Abs(r.CostUSD-wantCost) > 1e-12 {
			t.Errorf("bucket %d: cost %v, want %v from the cluster metadata prices", r.Bucket, r.CostUSD, wantCost)
		}
	}
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, r := range recs {
		lo, hi = math.Min(lo, r.TTFTMs), math.Max(hi, r.TTFTMs)
	}
	t.Logf("%d records; TTFT %.1f–%.1f ms for an injected %d ms", len(recs), lo, hi, ttftMs)
	if len(seen) != n {
		t.Errorf("records for %d distinct requests, want %d", len(seen), n)
	}
}

func TestEnvoyFailuresAreClassified(t *testing.T) {
	svc := startService(t)
	env := startEnvoy(t, startUpstream(t), svc.addr, fastClose)
	tests := []struct {
		name    string
		hdr     map[string]string
		want    string
		wantTok uint32
	}{
		{"upstream 500 is http_5xx", map[string]string{hdrMode: "500"}, extproc.FailureHTTP5xx, 0},
		{"upstream cutting the stream is upstream_reset", map[string]string{hdrMode: "reset", hdrTokens: "6", hdrITL: "5"}, extproc.FailureUpstreamReset, 4},
		{"client leaving before the response is client_cancel", map[string]string{hdrMode: "slowheaders", hdrTTFT: "3000"}, extproc.FailureClientCancel, 0},
		{"non-streamed JSON is measured from its usage", map[string]string{hdrMode: "json", hdrTokens: "3"}, "", 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc.sink.reset()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if tt.want == extproc.FailureClientCancel {
				// The upstream answers after 3 s; the client gives up first.
				cctx, ccancel := context.WithTimeout(ctx, 300*time.Millisecond)
				defer ccancel()
				ctx = cctx
			}
			completion(ctx, env.withURL, tt.hdr)
			r := svc.sink.wait(t, 1, 10*time.Second)[0]
			if r.Failure != tt.want || r.CompletionTokens != tt.wantTok {
				t.Fatalf("failure %q tokens %d (status %d), want %q with %d tokens", r.Failure, r.CompletionTokens, r.Status, tt.want, tt.wantTok)
			}
		})
	}
}

func TestEnvoyServesEveryRequestWithoutTheService(t *testing.T) {
	svc := startService(t)
	env := startEnvoy(t, startUpstream(t), svc.addr, fastClose)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if code, _, err := completion(ctx, env.withURL, nil); err != nil || code != 200 {
		t.Fatalf("with the service up: %d %v", code, err)
	}
	svc.grpc.Stop()
	for i := 0; i < 20; i++ {
		code, body, err := completion(ctx, env.withURL, map[string]string{hdrTokens: "4", hdrITL: "1"})
		if err != nil || code != 200 || !strings.Contains(body, "[DONE]") || strings.Count(body, `"content":"t`) != 4 {
			t.Fatalf("request %d with the service down: status %d err %v body %q", i, code, err, body)
		}
	}
}
