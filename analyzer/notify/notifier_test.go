package notify

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/internal/config"
)

// The receivers below are real HTTP servers on loopback (httptest); the
// notifier reaches them over TCP like any webhook.

type delivery struct {
	header http.Header
	body   []byte
}

// receiver records every request and answers with status(n) for the n-th
// (1-based).
type receiver struct {
	*httptest.Server
	got   chan delivery
	calls atomic.Int32
	mu    sync.Mutex
	ids   []string // HeaderDelivery of every call
}

func newReceiver(t *testing.T, status func(n int) int) *receiver {
	t.Helper()
	r := &receiver{got: make(chan delivery, 100)}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		n := int(r.calls.Add(1))
		r.mu.Lock()
		r.ids = append(r.ids, req.Header.Get(HeaderDelivery))
		r.mu.Unlock()
		b, _ := io.ReadAll(req.Body)
		code := status(n)
		if code/100 == 2 {
			r.got <- delivery{req.Header.Clone(), b}
		}
		w.WriteHeader(code)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) next(t *testing.T) delivery {
	t.Helper()
	select {
	case d := <-r.got:
		return d
	case <-time.After(10 * time.Second):
		t.Fatalf("no delivery after %d calls", r.calls.Load())
		return delivery{}
	}
}

func ok(int) int { return http.StatusNoContent }

func fast(c Config) Config {
	c.Backoff, c.MaxBackoff, c.Timeout = config.Duration(5*time.Millisecond), config.Duration(20*time.Millisecond), config.Duration(2*time.Second)
	return c
}

// outcomes receives "webhook outcome" for every attempt of n.
func outcomes(n *Notifier) chan string {
	c := make(chan string, 1000)
	n.outcome = func(w, what string) { c <- w + " " + what }
	return c
}

// waitOutcome waits for the given outcome of webhook w.
func waitOutcome(t *testing.T, c chan string, want string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case got := <-c:
			if got == want {
				return
			}
		case <-timeout:
			t.Fatalf("no %q", want)
		}
	}
}

func newNotifier(t *testing.T, c Config, reg prometheus.Registerer) *Notifier {
	t.Helper()
	n, err := New(c, Options{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = n.Close(ctx)
	})
	return n
}

// change stands for one persisted change: a new decision in the history.
func change(action analyzer.Action, code analyzer.Code, sec int) (before, after *analyzer.Rollout) {
	before = rollout(analyzer.RolloutRunning)
	status := analyzer.RolloutRunning
	if action == analyzer.ActionRollback {
		status = analyzer.RolloutRolledBack
	}
	after = rollout(status, ev(sec, "decision", action, code, 0))
	return before, after
}

func TestSignedJSONReachesTheWebhookAndVerifies(t *testing.T) {
	rcv := newReceiver(t, ok)
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	n := newNotifier(t, fast(Config{Webhooks: []Webhook{{URL: rcv.URL + "/hook", SecretFile: secretFile}}}), nil)
	n.Changed(change(analyzer.ActionRollback, analyzer.CodeHarm, 3))

	d := rcv.next(t)
	if !Verify([]byte("s3cret"), d.body, d.header.Get(HeaderSignature)) {
		t.Fatalf("signature %q does not verify the body with the file's secret (trailing newline trimmed)", d.header.Get(HeaderSignature))
	}
	if Verify([]byte("other"), d.body, d.header.Get(HeaderSignature)) {
		t.Fatal("signature verifies under another secret")
	}
	var m Message
	if err := json.Unmarshal(d.body, &m); err != nil {
		t.Fatal(err)
	}
	if m.Type != "decision" || m.Action != analyzer.ActionRollback || m.Rollout.Status != analyzer.RolloutRolledBack ||
		!m.StatusChanged || m.PreviousStatus != analyzer.RolloutRunning || d.header.Get(HeaderDelivery) != m.ID || d.header.Get(HeaderEvent) != "decision" {
		t.Fatalf("message %+v headers %v", m, d.header)
	}
}

func TestSlackWebhookGetsASlackMessageUnsignedWithoutSecret(t *testing.T) {
	rcv := newReceiver(t, ok)
	n := newNotifier(t, fast(Config{Webhooks: []Webhook{{URL: rcv.URL, Format: FormatSlack}}}), nil)
	n.Changed(change(analyzer.ActionRollback, analyzer.CodeHarm, 3))
	d := rcv.next(t)
	var s map[string]any
	if err := json.Unmarshal(d.body, &s); err != nil {
		t.Fatal(err)
	}
	if text, _ := s["text"].(string); !strings.Contains(text, "rolled back") || s["blocks"] == nil {
		t.Fatalf("slack body %s", d.body)
	}
	if d.header.Get(HeaderSignature) != "" {
		t.Fatal("signed without a secret")
	}
}

func TestReceiverThatFailsTwiceGetsTheSameDeliveryOnTheThirdAttempt(t *testing.T) {
	rcv := newReceiver(t, func(n int) int {
		if n <= 2 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	reg := prometheus.NewRegistry()
	n := newNotifier(t, fast(Config{Webhooks: []Webhook{{Name: "ops", URL: rcv.URL}}}), reg)
	seen := outcomes(n)
	n.Changed(change(analyzer.ActionRollback, analyzer.CodeHarm, 3))
	waitOutcome(t, seen, "ops sent")
	rcv.mu.Lock()
	ids := rcv.ids
	rcv.mu.Unlock()
	if len(ids) != 3 || ids[0] == "" || ids[0] != ids[1] || ids[1] != ids[2] {
		t.Fatalf("delivery ids of the calls %q, want three equal ones (two 500s, then accepted)", ids)
	}
	if got := testutil.ToFloat64(n.failed.WithLabelValues("ops")); got != 2 {
		t.Fatalf("failed attempts %v, want 2", got)
	}
	if got := testutil.ToFloat64(n.sent.WithLabelValues("ops")); got != 1 {
		t.Fatalf("sent %v, want 1", got)
	}
}

func TestReceiverDownThenBackGetsTheNotificationAndTheDecisionNeverWaits(t *testing.T) {
	// A port nobody listens on: every attempt is refused until the
	// receiver starts there.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	n := newNotifier(t, fast(Config{Webhooks: []Webhook{{Name: "pager", URL: "http://" + addr + "/hook"}}, MaxAttempts: 1000}), nil)
	seen := outcomes(n)

	start := time.Now()
	n.Changed(change(analyzer.ActionRollback, analyzer.CodeHarm, 3))
	if took := time.Since(start); took > 50*time.Millisecond {
		t.Fatalf("Changed took %v with the receiver down; a decision must never wait on a webhook", took)
	}
	// Three refused attempts, then the receiver comes up.
	for range 3 {
		waitOutcome(t, seen, "pager failed")
	}
	got := make(chan []byte, 1)
	l2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		select {
		case got <- b:
		default:
		}
	})}
	go srv.Serve(l2)
	defer srv.Close()
	select {
	case b := <-got:
		if !strings.Contains(string(b), `"action":"rollback"`) {
			t.Fatalf("body %s", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the notification never arrived after the receiver came back")
	}
}

func TestReceiverDownForGoodIsGivenUpAfterMaxAttemptsAndCounted(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	reg := prometheus.NewRegistry()
	n := newNotifier(t, fast(Config{Webhooks: []Webhook{{Name: "gone", URL: "http://" + addr}}, MaxAttempts: 3}), reg)
	seen := outcomes(n)
	n.Changed(change(analyzer.ActionRollback, analyzer.CodeHarm, 3))
	waitOutcome(t, seen, "gone attempts")
	if got := testutil.ToFloat64(n.dropped.WithLabelValues("gone", "attempts")); got != 1 {
		t.Fatalf("dropped %v, want 1", got)
	}
	if got := testutil.ToFloat64(n.failed.WithLabelValues("gone")); got != 3 {
		t.Fatalf("failed attempts %v, want 3", got)
	}
}

func TestSlowReceiverFillsOnlyItsOwnBoundedQueue(t *testing.T) {
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
	}))
	defer slow.Close()
	quick := newReceiver(t, ok)
	reg := prometheus.NewRegistry()
	n := newNotifier(t, fast(Config{QueueSize: 4, MaxAttempts: 1, Webhooks: []Webhook{{Name: "slow", URL: slow.URL}, {Name: "quick", URL: quick.URL}}}), reg)
	defer close(release)

	const changes = 50
	var longest time.Duration
	for i := range changes {
		start := time.Now()
		n.Changed(change(analyzer.ActionAdvance, analyzer.CodeGuarded, i))
		longest = max(longest, time.Since(start))
		quick.next(t) // the quick receiver keeps up
	}
	if longest > 50*time.Millisecond {
		t.Fatalf("a change took %v behind a receiver that never answers", longest)
	}
	// The slow one holds one message in flight and four queued; the
	// rest are dropped, and only there.
	if got := testutil.ToFloat64(n.dropped.WithLabelValues("slow", "queue_full")); got != changes-5 {
		t.Fatalf("slow webhook dropped %v of %d, want %d", got, changes, changes-5)
	}
	if got := testutil.ToFloat64(n.dropped.WithLabelValues("quick", "queue_full")); got != 0 {
		t.Fatalf("quick webhook dropped %v", got)
	}
}

func TestRejectingReceiverIsNotRetried(t *testing.T) {
	rcv := newReceiver(t, func(int) int { return http.StatusNotFound })
	n := newNotifier(t, fast(Config{Webhooks: []Webhook{{Name: "typo", URL: rcv.URL}}}), nil)
	seen := outcomes(n)
	n.Changed(change(analyzer.ActionRollback, analyzer.CodeHarm, 3))
	waitOutcome(t, seen, "typo rejected")
	if c := rcv.calls.Load(); c != 1 {
		t.Fatalf("%d calls to a webhook that answered 404, want 1", c)
	}
}

func TestWebhookPerModelAndWithoutHolds(t *testing.T) {
	all, llamaOnly, noHolds := newReceiver(t, ok), newReceiver(t, ok), newReceiver(t, ok)
	n := newNotifier(t, fast(Config{Webhooks: []Webhook{
		{Name: "all", URL: all.URL},
		{Name: "llama", URL: llamaOnly.URL, Models: []string{"llama"}},
		{Name: "noholds", URL: noHolds.URL, SkipHolds: true},
	}}), nil)
	b, a := change(analyzer.ActionHold, analyzer.CodeMinSamples, 1)
	other, otherAfter := change(analyzer.ActionAdvance, analyzer.CodeGuarded, 2)
	other.Model, otherAfter.Model = "mistral", "mistral"
	rb, rbAfter := change(analyzer.ActionRollback, analyzer.CodeHarm, 3)
	n.Changed(b, a)
	n.Changed(other, otherAfter)
	n.Changed(rb, rbAfter)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Close(ctx); err != nil {
		t.Fatal(err)
	}
	summary := func(r *receiver) string {
		var out []string
		for len(r.got) > 0 {
			var m Message
			_ = json.Unmarshal((<-r.got).body, &m)
			out = append(out, m.Rollout.Model+":"+string(m.Action))
		}
		return strings.Join(out, ",")
	}
	for _, c := range []struct {
		r    *receiver
		want string
	}{
		{all, "llama:hold,mistral:advance,llama:rollback"},
		{llamaOnly, "llama:hold,llama:rollback"},
		{noHolds, "mistral:advance,llama:rollback"},
	} {
		if got := summary(c.r); got != c.want {
			t.Errorf("got %s, want %s", got, c.want)
		}
	}
}

func TestStoreChangesReachTheWebhook(t *testing.T) {
	rcv := newReceiver(t, ok)
	n := newNotifier(t, fast(Config{Webhooks: []Webhook{{URL: rcv.URL}}}), nil)
	st, err := analyzer.OpenRolloutStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.OnChange(n.Changed)()
	ro := rollout(analyzer.RolloutRunning, ev(0, "operator", "", analyzer.CodeOperator, 0))
	if err := st.Create(ro); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Update(ro.ID, func(x *analyzer.Rollout) error {
		x.Status = analyzer.RolloutPaused
		x.History = append(x.History, ev(5, "operator", "pause", analyzer.CodeOperator, 0))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{`"type":"operator"`, `"previous_status":"running"`} {
		if d := rcv.next(t); !strings.Contains(string(d.body), want) {
			t.Fatalf("delivery %d lacks %s: %s", i+1, want, d.body)
		}
	}
}

func TestConfigRejectsTyposAndBadWebhooks(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "notify.yaml")
	if err := os.WriteFile(path, []byte("webhooks:\n  - url: https://x.example/h\n    fromat: slack\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(path); err == nil || !strings.Contains(err.Error(), "fromat") {
		t.Fatalf("unknown key not rejected: %v", err)
	}
	err := Config{Webhooks: []Webhook{
		{URL: "ftp://x.example/h"},
		{URL: "https://hooks.slack.com/services/SECRET", Format: "teams"},
		{URL: "https://a.example", SecretFile: filepath.Join(dir, "missing")},
		{URL: "https://b.example", Models: []string{""}},
	}}.Validate()
	for _, want := range []string{"webhook 1: url", "webhook 2: format \"teams\"", "webhook 3: secret_file", "webhook 4: models"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
	if err != nil && strings.Contains(err.Error(), "SECRET") {
		t.Errorf("error leaks a webhook URL's path: %v", err)
	}
}

func TestFlagsAddWebhooksToTheFileAndNameThemApart(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "notify.yaml")
	if err := os.WriteFile(path, []byte("webhooks:\n  - url: https://a.example/h\n    models: [llama]\nmax_attempts: 3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := Flags{ConfigFile: path, Webhooks: []string{"https://b.example/1", "https://b.example/2"}, Slack: []string{"https://hooks.slack.com/services/X"}, SecretFile: secret}
	c, err := f.Config()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, w := range c.Webhooks {
		got = append(got, fmt.Sprintf("%s %s %v %t %t", w.name(), w.format(), w.Models, w.SecretFile != "", w.SkipHolds))
	}
	want := "a.example json [llama] false false|b.example-1 json [] true false|b.example-2 json [] true false|hooks.slack.com slack [] false true"
	if strings.Join(got, "|") != want || c.MaxAttempts != 3 {
		t.Fatalf("got %s (max attempts %d)\nwant %s", strings.Join(got, "|"), c.MaxAttempts, want)
	}
	var u urlList = []string{"https://hooks.slack.com/services/SECRET"}
	if strings.Contains(u.String(), "SECRET") {
		t.Fatalf("flag default shows the URL's path: %s", u.String())
	}
}
