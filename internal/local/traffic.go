package local

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/llmcanary/llmcanary/internal/wire"
)

// Traffic sends a steady stream of OpenAI chat requests from simulated
// users through a gateway, as real clients would: each user has an identity
// (x-user-id), requests stream with usage, and every answer's served version
// is counted.
type Traffic struct {
	Gateway string
	Model   string
	Users   int           // distinct identities, picked round-robin
	Rate    float64       // requests per second
	Workers int           // concurrent requests at most (default 256)
	Timeout time.Duration // per request (default 60 s)

	mu     sync.Mutex
	served map[string]int
	failed int
}

// Run sends requests until ctx ends.
func (t *Traffic) Run(ctx context.Context) {
	if t.Workers == 0 {
		t.Workers = 256
	}
	if t.Timeout == 0 {
		t.Timeout = 60 * time.Second
	}
	t.mu.Lock()
	t.served = map[string]int{}
	t.mu.Unlock()
	client := &http.Client{Timeout: t.Timeout, Transport: &http.Transport{MaxIdleConnsPerHost: t.Workers}}
	sem := make(chan struct{}, t.Workers)
	tick := time.NewTicker(time.Duration(float64(time.Second) / t.Rate))
	defer tick.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		select {
		case sem <- struct{}{}:
		default:
			continue // the pool is saturated; a real client would queue or give up
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			v, err := t.one(ctx, client, fmt.Sprintf("user-%d", i%t.Users), i)
			t.mu.Lock()
			defer t.mu.Unlock()
			if err != nil {
				if ctx.Err() == nil {
					t.failed++
				}
				return
			}
			t.served[v]++
		}(i)
	}
}

func (t *Traffic) one(ctx context.Context, c *http.Client, user string, i int) (string, error) {
	body := fmt.Sprintf(`{"model":%q,"stream":true,"stream_options":{"include_usage":true},"user":%q,`+
		`"messages":[{"role":"user","content":"Question %d: what should I know about this?"}]}`, t.Model, user, i)
	req, err := http.NewRequestWithContext(ctx, "POST", "http://"+t.Gateway+"/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("content-type", "application/json")
	req.Header.Set(wire.HeaderUserID, user)
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return "", err
	}
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("status %d", resp.StatusCode)
	}
	return resp.Header.Get(wire.HeaderVersion), nil
}

// Served returns how many successful answers each version gave, and how many
// requests failed, and resets the counts.
func (t *Traffic) Served() (map[string]int, int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	out, failed := t.served, t.failed
	t.served, t.failed = map[string]int{}, 0
	return out, failed
}
