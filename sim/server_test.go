package sim

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/internal/wire"
)

func startServer(t *testing.T, p Profile) *httptest.Server {
	t.Helper()
	s, err := New(p)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	return ts
}

func do(t *testing.T, method, url, body string, hdr map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("content-type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// event is one SSE event and when the client read it.
type event struct {
	data string
	at   time.Time
}

// readSSE parses an SSE body strictly: every event is exactly one
// "data: ..." line followed by a blank line. It returns the events read and
// the read error that ended the body (nil at a clean end).
func readSSE(t *testing.T, r io.Reader) ([]event, error) {
	t.Helper()
	br := bufio.NewReader(r)
	var evs []event
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			if err == io.EOF && line == "" {
				return evs, nil
			}
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return evs, err
		}
		at := time.Now()
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok || !strings.HasSuffix(data, "\n") {
			t.Fatalf("SSE line %q does not start with \"data: \"", line)
		}
		blank, err := br.ReadString('\n')
		if err != nil {
			return append(evs, event{strings.TrimSuffix(data, "\n"), at}), io.ErrUnexpectedEOF
		}
		if blank != "\n" {
			t.Fatalf("SSE event %q not followed by a blank line but %q", data, blank)
		}
		evs = append(evs, event{strings.TrimSuffix(data, "\n"), at})
	}
}

func decodeMap(t *testing.T, s string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("chunk %q is not JSON: %v", s, err)
	}
	return m
}

func headerInt(t *testing.T, resp *http.Response, name string) int {
	t.Helper()
	n, err := strconv.Atoi(resp.Header.Get(name))
	if err != nil {
		t.Fatalf("header %s = %q: %v", name, resp.Header.Get(name), err)
	}
	return n
}

func TestStreamFormat(t *testing.T) {
	p := Profile{Version: "v2", Model: "m", OutputTokens: UniformCount(3, 12), ITL: Fixed(1)}
	ts := startServer(t, p)
	cases := []struct {
		name         string
		chat         bool
		includeUsage bool
		maxTokens    int
		wantFinish   string
	}{
		{"chat without usage", true, false, 0, FinishStop},
		{"chat with usage", true, true, 0, FinishStop},
		{"chat cut by max_tokens finishes with length", true, true, 2, FinishLength},
		{"completions without usage", false, false, 0, FinishStop},
		{"completions with usage", false, true, 0, FinishStop},
		{"completions cut by max_tokens finishes with length", false, false, 2, FinishLength},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req := map[string]any{"model": "m", "stream": true}
			path, object, idPrefix := "/v1/completions", "text_completion", "cmpl-"
			if tc.chat {
				path, object, idPrefix = "/v1/chat/completions", "chat.completion.chunk", "chatcmpl-"
				req["messages"] = []map[string]string{{"role": "user", "content": "hello there"}}
			} else {
				req["prompt"] = "hello there"
			}
			if tc.includeUsage {
				req["stream_options"] = map[string]bool{"include_usage": true}
			}
			if tc.maxTokens > 0 {
				req["max_tokens"] = tc.maxTokens
			}
			body, _ := json.Marshal(req)
			resp := do(t, "POST", ts.URL+path, string(body), nil)
			if resp.StatusCode != 200 || resp.Header.Get("content-type") != "text/event-stream" {
				t.Fatalf("status %d content-type %q", resp.StatusCode, resp.Header.Get("content-type"))
			}
			if got := resp.Header.Get(wire.HeaderServedBy); got != "v2" {
				t.Errorf("%s = %q, want v2", wire.HeaderServedBy, got)
			}
			planned := headerInt(t, resp, HeaderCompletionTokens)
			if tc.maxTokens > 0 && planned != tc.maxTokens {
				t.Errorf("planned %d tokens, want max_tokens %d", planned, tc.maxTokens)
			}
			evs, err := readSSE(t, resp.Body)
			if err != nil {
				t.Fatalf("stream ended with %v", err)
			}
			if len(evs) == 0 || evs[len(evs)-1].data != "[DONE]" {
				t.Fatalf("last event is not [DONE]: %v", evs)
			}
			evs = evs[:len(evs)-1]

			var tokens, finishes int
			var text strings.Builder
			sawUsage := false
			for i, ev := range evs {
				c := decodeMap(t, ev.data)
				if c["object"] != object || !strings.HasPrefix(c["id"].(string), idPrefix) || c["model"] != "m" || c["created"].(float64) <= 0 {
					t.Fatalf("chunk %d has a wrong envelope: %s", i, ev.data)
				}
				u, hasUsage := c["usage"]
				if hasUsage != tc.includeUsage {
					t.Fatalf("chunk %d: usage present %v, want %v: %s", i, hasUsage, tc.includeUsage, ev.data)
				}
				choices := c["choices"].([]any)
				if len(choices) == 0 {
					if !tc.includeUsage || i != len(evs)-1 {
						t.Fatalf("chunk %d without choices, but it is not the final usage chunk: %s", i, ev.data)
					}
					um := u.(map[string]any)
					if int(um["completion_tokens"].(float64)) != planned ||
						um["total_tokens"].(float64) != um["prompt_tokens"].(float64)+um["completion_tokens"].(float64) ||
						um["prompt_tokens"].(float64) != 3 { // 11 characters at 0.25 tokens each
						t.Fatalf("usage %v, want %d completion tokens and 3 prompt tokens", um, planned)
					}
					sawUsage = true
					continue
				}
				if u != nil {
					t.Fatalf("chunk %d: usage %v, want null before the usage chunk", i, u)
				}
				ch := choices[0].(map[string]any)
				if lp, ok := ch["logprobs"]; !ok || lp != nil || ch["index"].(float64) != 0 {
					t.Fatalf("chunk %d: want index 0 and logprobs null: %s", i, ev.data)
				}
				if fr, ok := ch["finish_reason"]; !ok {
					t.Fatalf("chunk %d has no finish_reason key: %s", i, ev.data)
				} else if fr != nil {
					finishes++
					if fr != tc.wantFinish {
						t.Fatalf("finish_reason %v, want %s", fr, tc.wantFinish)
					}
				}
				var content string
				if tc.chat {
					d := ch["delta"].(map[string]any)
					if i == 0 {
						if d["role"] != "assistant" || d["content"] != "" {
							t.Fatalf("first chat chunk should carry role assistant and empty content: %s", ev.data)
						}
						continue
					}
					if _, ok := d["role"]; ok {
						t.Fatalf("chunk %d repeats the role: %s", i, ev.data)
					}
					content = d["content"].(string)
				} else {
					content = ch["text"].(string)
				}
				if content == "" {
					t.Fatalf("token chunk %d is empty", i)
				}
				if finishes > 0 && ch["finish_reason"] == nil {
					t.Fatalf("token chunk %d after the finish", i)
				}
				tokens++
				text.WriteString(content)
			}
			if tokens != planned || finishes != 1 || sawUsage != tc.includeUsage {
				t.Errorf("%d token chunks (planned %d), %d finishes, usage chunk %v", tokens, planned, finishes, sawUsage)
			}
		})
	}
}

func TestNonStreaming(t *testing.T) {
	ts := startServer(t, Profile{Version: "v1", OutputTokens: FixedCount(9)})
	cases := []struct {
		name, path, body, object string
		wantTokens               int
		wantFinish               string
	}{
		{"chat", "/v1/chat/completions", `{"model":"llama-3-8b","messages":[{"role":"user","content":"abcdefgh"}]}`, "chat.completion", 9, FinishStop},
		{"chat with max_completion_tokens", "/v1/chat/completions", `{"model":"llama-3-8b","max_tokens":50,"max_completion_tokens":4,"messages":[{"role":"user","content":[{"type":"text","text":"abcdefgh"}]}]}`, "chat.completion", 4, FinishLength},
		{"completions", "/v1/completions", `{"model":"llama-3-8b","prompt":"abcdefgh","max_tokens":3}`, "text_completion", 3, FinishLength},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp := do(t, "POST", ts.URL+tc.path, tc.body, nil)
			if resp.StatusCode != 200 || resp.Header.Get("content-type") != "application/json" {
				t.Fatalf("status %d content-type %q", resp.StatusCode, resp.Header.Get("content-type"))
			}
			var got struct {
				ID      string `json:"id"`
				Object  string `json:"object"`
				Model   string `json:"model"`
				Choices []struct {
					Message      *chatMessage `json:"message"`
					Text         *string      `json:"text"`
					FinishReason string       `json:"finish_reason"`
				} `json:"choices"`
				Usage usage `json:"usage"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
				t.Fatal(err)
			}
			if got.Object != tc.object || got.Model != "llama-3-8b" || len(got.Choices) != 1 || got.ID == "" {
				t.Fatalf("envelope %+v", got)
			}
			c := got.Choices[0]
			content := ""
			switch {
			case c.Message != nil && c.Message.Role == "assistant":
				content = c.Message.Content
			case c.Text != nil:
				content = *c.Text
			}
			if content == "" || c.FinishReason != tc.wantFinish {
				t.Errorf("content %q finish %q, want text and %q", content, c.FinishReason, tc.wantFinish)
			}
			if got.Usage != (usage{PromptTokens: 2, CompletionTokens: tc.wantTokens, TotalTokens: 2 + tc.wantTokens}) {
				t.Errorf("usage %+v, want 2 prompt and %d completion tokens", got.Usage, tc.wantTokens)
			}
			if headerInt(t, resp, HeaderCompletionTokens) != tc.wantTokens || resp.Header.Get(HeaderOutcome) != "ok" {
				t.Errorf("plan headers %v", resp.Header)
			}
		})
	}
}

func TestBadInput(t *testing.T) {
	ts := startServer(t, Profile{Version: "v1", Model: "m"})
	cases := []struct {
		name, method, path, body string
		wantStatus               int
		wantCode                 any
	}{
		{"malformed JSON", "POST", "/v1/chat/completions", `{"model":`, 400, nil},
		{"missing model", "POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}]}`, 400, nil},
		{"missing messages", "POST", "/v1/chat/completions", `{"model":"m"}`, 400, nil},
		{"empty messages", "POST", "/v1/chat/completions", `{"model":"m","messages":[]}`, 400, nil},
		{"content of a wrong type", "POST", "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":7}]}`, 400, nil},
		{"missing prompt", "POST", "/v1/completions", `{"model":"m"}`, 400, nil},
		{"max_tokens below one", "POST", "/v1/completions", `{"model":"m","prompt":"x","max_tokens":0}`, 400, nil},
		{"wrong model", "POST", "/v1/chat/completions", `{"model":"gpt-4","messages":[{"role":"user","content":"hi"}]}`, 404, "model_not_found"},
		{"wrong method", "GET", "/v1/chat/completions", ``, 405, nil},
		{"wrong method on models", "POST", "/v1/models", `{}`, 405, nil},
		{"unknown path", "GET", "/v2/things", ``, 404, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp := do(t, tc.method, ts.URL+tc.path, tc.body, nil)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.wantStatus)
			}
			if resp.Header.Get(wire.HeaderServedBy) != "v1" {
				t.Errorf("no %s header on an error", wire.HeaderServedBy)
			}
			var e apiError
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || e.Error.Message == "" || e.Error.Type == "" {
				t.Fatalf("error body %+v (%v), want OpenAI error JSON", e, err)
			}
			if e.Error.Code != tc.wantCode {
				t.Errorf("code %v, want %v", e.Error.Code, tc.wantCode)
			}
		})
	}
}

func TestInjectedFailures(t *testing.T) {
	cases := []struct {
		name        string
		p           Profile
		wantStatus  int
		wantOutcome Outcome
		wantHeader  [2]string
	}{
		{"error rate one answers 500", Profile{Version: "v", ErrorRate: 1}, 500, OutcomeError, [2]string{}},
		{"rate limit rate one answers 429 with retry-after", Profile{Version: "v", RateLimitRate: 1, RetryAfterSeconds: 3}, 429, OutcomeRateLimit, [2]string{"retry-after", "3"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, tc.p)
			for _, stream := range []bool{false, true} {
				body := fmt.Sprintf(`{"model":"llama-3-8b","stream":%v,"messages":[{"role":"user","content":"hi"}]}`, stream)
				resp := do(t, "POST", ts.URL+"/v1/chat/completions", body, nil)
				if resp.StatusCode != tc.wantStatus || resp.Header.Get(HeaderOutcome) != string(tc.wantOutcome) {
					t.Fatalf("stream=%v: status %d outcome %q", stream, resp.StatusCode, resp.Header.Get(HeaderOutcome))
				}
				if tc.wantHeader[0] != "" && resp.Header.Get(tc.wantHeader[0]) != tc.wantHeader[1] {
					t.Errorf("%s = %q, want %q", tc.wantHeader[0], resp.Header.Get(tc.wantHeader[0]), tc.wantHeader[1])
				}
				var e apiError
				if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || e.Error.Message == "" {
					t.Fatalf("error body %+v (%v)", e, err)
				}
			}
		})
	}
}

func TestAbortCutsTheStream(t *testing.T) {
	ts := startServer(t, Profile{Version: "v", AbortRate: 1, OutputTokens: FixedCount(10)})
	for i := range 5 {
		body := fmt.Sprintf(`{"model":"llama-3-8b","stream":true,"messages":[{"role":"user","content":"hi %d"}]}`, i)
		resp := do(t, "POST", ts.URL+"/v1/chat/completions", body, nil)
		if resp.Header.Get(HeaderOutcome) != "abort" {
			t.Fatalf("outcome %q", resp.Header.Get(HeaderOutcome))
		}
		want := headerInt(t, resp, HeaderCompletionTokens)
		evs, err := readSSE(t, resp.Body)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("stream ended with %v, want an unexpected EOF", err)
		}
		if len(evs) != want+1 { // the role chunk, then the tokens
			t.Fatalf("%d events before the cut, want role + %d tokens", len(evs), want)
		}
		for _, ev := range evs {
			if ev.data == "[DONE]" || strings.Contains(ev.data, `"finish_reason":"`) {
				t.Fatalf("aborted stream carried %s", ev.data)
			}
		}
	}

	req, _ := http.NewRequest("POST", ts.URL+"/v1/completions", strings.NewReader(`{"model":"llama-3-8b","prompt":"x"}`))
	if resp, err := http.DefaultClient.Do(req); err == nil {
		b, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("non-streamed abort answered %d %q (%v), want the connection cut", resp.StatusCode, b, rerr)
	}
}

func TestMeasuredTTFTMatchesInjected(t *testing.T) {
	const ttft, itl, n = 80 * time.Millisecond, 10 * time.Millisecond, 6
	ts := startServer(t, Profile{Version: "v", TTFT: Fixed(80), ITL: Fixed(10), OutputTokens: FixedCount(n)})
	// Lower bounds hold on every attempt: the server is never early. The
	// upper bound is checked on the best of three attempts, so one stall of
	// a busy machine does not fail the test while a server that is
	// systematically late does.
	const attempts, slack = 3, 40 * time.Millisecond
	bestFirst, bestLast := time.Hour, time.Hour
	for a := range attempts {
		body := fmt.Sprintf(`{"model":"llama-3-8b","stream":true,"messages":[{"role":"user","content":"time me %d"}]}`, a)
		start := time.Now()
		resp := do(t, "POST", ts.URL+"/v1/chat/completions", body, nil)
		headersAt := time.Since(start)
		if resp.Header.Get(HeaderTTFTMS) != "80.000" || resp.Header.Get(HeaderITLMS) != "10.000" {
			t.Errorf("announced ttft %q itl %q", resp.Header.Get(HeaderTTFTMS), resp.Header.Get(HeaderITLMS))
		}
		evs, err := readSSE(t, resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if headersAt >= ttft {
			t.Errorf("headers arrived after %v, want them before the TTFT wait", headersAt)
		}
		firstToken := evs[1].at.Sub(start) // evs[0] is the role chunk
		lastToken := evs[n].at.Sub(start)
		if firstToken < ttft {
			t.Errorf("measured TTFT %v is shorter than the injected %v", firstToken, ttft)
		}
		// Tokens keep to a schedule from the request's arrival, so each one
		// is at or after its planned time.
		for i := 1; i <= n; i++ {
			if at, planned := evs[i].at.Sub(start), ttft+time.Duration(i-1)*itl; at < planned {
				t.Errorf("token %d at %v, before the planned %v", i, at, planned)
			}
		}
		want := ttft + (n-1)*itl
		bestFirst, bestLast = min(bestFirst, firstToken-ttft), min(bestLast, lastToken-want)
	}
	if bestFirst > slack || bestLast > slack {
		t.Errorf("best of %d attempts: first token %v and last token %v late, want within %v", attempts, bestFirst, bestLast, slack)
	}
}

func TestNonStreamedAnswerWaitsForTheWholeGeneration(t *testing.T) {
	ts := startServer(t, Profile{Version: "v", TTFT: Fixed(30), ITL: Fixed(10), OutputTokens: FixedCount(4)})
	start := time.Now()
	resp := do(t, "POST", ts.URL+"/v1/completions", `{"model":"llama-3-8b","prompt":"x"}`, nil)
	io.ReadAll(resp.Body)
	if took := time.Since(start); took < 60*time.Millisecond {
		t.Errorf("answered after %v, want at least TTFT + 3 gaps = 60ms", took)
	}
}

func TestJudgeMode(t *testing.T) {
	ts := startServer(t, Profile{Version: "judge", Model: JudgeModel})
	grade := func(answer string, stream bool) string {
		body, _ := json.Marshal(map[string]any{
			"model":  JudgeModel,
			"stream": stream,
			"messages": []map[string]string{
				{"role": "system", "content": `Grade the answer. Reply with JSON {"score": x}.`},
				{"role": "user", "content": "Question: where is the Eiffel Tower?\nAnswer: " + answer},
			},
		})
		resp := do(t, "POST", ts.URL+"/v1/chat/completions", string(body), nil)
		if resp.StatusCode != 200 {
			t.Fatalf("judge answered %d", resp.StatusCode)
		}
		if !stream {
			var c struct {
				Choices []struct{ Message chatMessage } `json:"choices"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&c); err != nil || len(c.Choices) != 1 {
				t.Fatalf("judge reply %+v (%v)", c, err)
			}
			return c.Choices[0].Message.Content
		}
		evs, err := readSSE(t, resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		for _, ev := range evs[1 : len(evs)-1] {
			var c struct {
				Choices []struct{ Delta chatDelta } `json:"choices"`
			}
			json.Unmarshal([]byte(ev.data), &c)
			out.WriteString(*c.Choices[0].Delta.Content)
		}
		return out.String()
	}
	cases := []struct {
		name, answer string
		want         float64
	}{
		{"good answer scores one", "It is in Paris, France.", 1},
		{"bad answer scores zero", "Sure! " + BadAnswerMarker + " It is lovely.", 0},
	}
	for _, tc := range cases {
		for _, stream := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s stream=%v", tc.name, stream), func(t *testing.T) {
				content := grade(tc.answer, stream)
				var v struct {
					Score *float64 `json:"score"`
				}
				if err := json.Unmarshal([]byte(content), &v); err != nil || v.Score == nil || *v.Score != tc.want {
					t.Fatalf("judge content %q, want score %v", content, tc.want)
				}
			})
		}
	}
}

func TestBadAnswersAreJudgedBad(t *testing.T) {
	pool := startServer(t, Profile{Version: "canary", BadAnswerRate: 0.5, OutputTokens: UniformCount(6, 30)})
	for i := range 40 {
		body := fmt.Sprintf(`{"model":"llama-3-8b","messages":[{"role":"user","content":"question %d"}]}`, i)
		resp := do(t, "POST", pool.URL+"/v1/chat/completions", body, nil)
		var c struct {
			Choices []struct{ Message chatMessage } `json:"choices"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
			t.Fatal(err)
		}
		bad := resp.Header.Get(HeaderOutcome) == string(OutcomeBad)
		if got := JudgeScore(c.Choices[0].Message.Content); got != map[bool]float64{true: 0, false: 1}[bad] {
			t.Fatalf("outcome %s answer %q scored %v", resp.Header.Get(HeaderOutcome), c.Choices[0].Message.Content, got)
		}
	}
}

func TestPlanFollowsTheRequest(t *testing.T) {
	ts := startServer(t, Profile{Version: "v", Seed: 5, TTFT: Uniform(0, 5), OutputTokens: UniformCount(1, 1000)})
	plan := func(body, rid string) string {
		hdr := map[string]string{}
		if rid != "" {
			hdr[wire.HeaderRequestID] = rid
		}
		resp := do(t, "POST", ts.URL+"/v1/completions", body, hdr)
		io.ReadAll(resp.Body)
		return resp.Header.Get(HeaderTTFTMS) + "/" + resp.Header.Get(HeaderCompletionTokens)
	}
	a := `{"model":"llama-3-8b","prompt":"same","user":"alice"}`
	b := `{"model":"llama-3-8b","prompt":"same","user":"bob"}`
	if plan(a, "") != plan(a, "") {
		t.Error("the same body got different plans")
	}
	if plan(a, "") == plan(b, "") {
		t.Error("different users got the same plan")
	}
	if plan(a, "r-1") != plan(b, "r-1") {
		t.Error("the same x-request-id got different plans")
	}
	if plan(a, "r-1") == plan(a, "r-2") {
		t.Error("different x-request-ids got the same plan")
	}
}

func TestModelsHealthMetrics(t *testing.T) {
	ts := startServer(t, Profile{Version: "v", Model: "m"})
	resp := do(t, "GET", ts.URL+"/v1/models", "", nil)
	var list struct {
		Object string `json:"object"`
		Data   []struct {
			ID, Object string
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil || list.Object != "list" || len(list.Data) != 1 || list.Data[0].ID != "m" || list.Data[0].Object != "model" {
		t.Errorf("models %+v (%v)", list, err)
	}
	if resp := do(t, "GET", ts.URL+"/health", "", nil); resp.StatusCode != 200 || resp.Header.Get(wire.HeaderServedBy) != "v" {
		t.Errorf("health %d", resp.StatusCode)
	}
	do(t, "POST", ts.URL+"/v1/completions", `{"model":"m","prompt":"x"}`, nil)
	resp = do(t, "GET", ts.URL+"/metrics", "", nil)
	b, _ := io.ReadAll(resp.Body)
	if !bytes.Contains(b, []byte(`llmcanary_sim_requests_total{outcome="ok"} 1`)) {
		t.Errorf("metrics lack the request counter:\n%s", b)
	}
}

// BenchmarkStreamZeroLatency measures the simulator's own cost per streamed
// request of 32 tokens when no latency is injected.
func BenchmarkStreamZeroLatency(b *testing.B) {
	s, err := New(Profile{Version: "v", OutputTokens: FixedCount(32)})
	if err != nil {
		b.Fatal(err)
	}
	ts := httptest.NewServer(s)
	defer ts.Close()
	body := `{"model":"llama-3-8b","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`
	for b.Loop() {
		resp, err := http.Post(ts.URL+"/v1/chat/completions", "application/json", strings.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
	}
}
