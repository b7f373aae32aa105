package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmcanary/llmcanary/analyzer"
)

// Headers of a delivery.
const (
	// HeaderSignature is sha256=<hex HMAC-SHA256 of the body under the
	// webhook's secret>; a receiver recomputes it over the raw body and
	// compares in constant time (Verify).
	HeaderSignature = "X-Llmcanary-Signature"
	// HeaderDelivery is the message's id, the same on every retry.
	HeaderDelivery = "X-Llmcanary-Delivery"
	// HeaderEvent is the message's type.
	HeaderEvent = "X-Llmcanary-Event"
)

// Sign returns the HeaderSignature value of body under secret.
func Sign(secret, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// Verify reports whether signature is body's under secret, in constant
// time. Receivers written in Go can use it as is.
func Verify(secret, body []byte, signature string) bool {
	return hmac.Equal([]byte(Sign(secret, body)), []byte(signature))
}

// Options are what a Notifier needs besides its Config.
type Options struct {
	// HTTP sends the deliveries. Default: a client without redirects
	// (a webhook that redirects is misconfigured, and a redirect would
	// carry the signed body elsewhere).
	HTTP *http.Client
	Log  *slog.Logger
	// Registerer, if set, gets the delivery counters.
	Registerer prometheus.Registerer
}

// Notifier sends every rollout change its webhooks want. Changed queues
// without blocking; each webhook has its own queue and sender, so a slow
// receiver delays only its own messages, in order. Safe for concurrent
// use.
type Notifier struct {
	cfg     Config
	targets []*target
	log     *slog.Logger
	http    *http.Client

	sent, failed, dropped *prometheus.CounterVec
	// outcome, if set, sees each attempt's outcome: sent, failed,
	// rejected, attempts, shutdown (tests wait on it).
	outcome func(webhook, what string)

	wg        sync.WaitGroup
	mu        sync.Mutex
	closed    bool
	stop      chan struct{}
	abandoned chan struct{}
}

type target struct {
	hook   Webhook
	name   string
	secret []byte
	queue  chan Message
}

// New validates cfg and starts one sender per webhook. Close stops them.
func New(cfg Config, o Options) (*Notifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	n := &Notifier{cfg: cfg, log: o.Log, http: o.HTTP, stop: make(chan struct{}), abandoned: make(chan struct{})}
	if n.log == nil {
		n.log = slog.Default()
	}
	if n.http == nil {
		n.http = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	n.sent = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "llmcanary", Subsystem: "analyzer", Name: "notifications_sent_total",
		Help: "Notifications a webhook accepted (2xx), by webhook.",
	}, []string{"webhook"})
	n.failed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "llmcanary", Subsystem: "analyzer", Name: "notification_attempts_failed_total",
		Help: "Delivery attempts that failed (network error, timeout, non-2xx), by webhook; a failed attempt is retried.",
	}, []string{"webhook"})
	n.dropped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "llmcanary", Subsystem: "analyzer", Name: "notifications_dropped_total",
		Help: "Notifications given up, by webhook and reason: queue_full, attempts (every attempt failed), rejected (4xx), shutdown.",
	}, []string{"webhook", "reason"})
	if o.Registerer != nil {
		for _, c := range []prometheus.Collector{n.sent, n.failed, n.dropped} {
			if err := o.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("notify: register metrics: %w", err)
			}
		}
	}
	for _, w := range cfg.Webhooks {
		secret, err := w.secret()
		if err != nil {
			return nil, err
		}
		t := &target{hook: w, name: w.name(), secret: secret, queue: make(chan Message, cfg.QueueSize)}
		n.targets = append(n.targets, t)
		n.wg.Add(1)
		go n.send(t)
	}
	return n, nil
}

// Changed queues the notifications of one persisted change (see
// Messages) for every webhook that wants them. It never blocks: a full
// queue drops the message, logged and counted. Its signature is that of
// analyzer.RolloutStore.OnChange.
func (n *Notifier) Changed(before, after *analyzer.Rollout) {
	msgs := Messages(before, after)
	if len(msgs) == 0 {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	for _, m := range msgs {
		for _, t := range n.targets {
			if !t.hook.wants(m) {
				continue
			}
			select {
			case t.queue <- m:
			default:
				n.dropped.WithLabelValues(t.name, "queue_full").Inc()
				n.log.Warn("notification dropped: the webhook's queue is full", "webhook", t.name, "rollout", m.Rollout.ID, "type", m.Type, "queue", cap(t.queue))
			}
		}
	}
}

// Close stops taking notifications and waits until every queue is sent or
// ctx ends; then the senders give up what is left (counted as shutdown).
func (n *Notifier) Close(ctx context.Context) error {
	n.mu.Lock()
	if !n.closed {
		n.closed = true
		close(n.stop)
	}
	n.mu.Unlock()
	done := make(chan struct{})
	go func() { n.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		close(n.abandoned)
		<-done
		return fmt.Errorf("notify: closed with notifications unsent: %w", ctx.Err())
	}
}

// send delivers one webhook's queue in order until Close has been called
// and the queue is empty.
func (n *Notifier) send(t *target) {
	defer n.wg.Done()
	for {
		select {
		case m := <-t.queue:
			n.deliver(t, m)
			continue
		default:
		}
		select {
		case m := <-t.queue:
			n.deliver(t, m)
		case <-n.stop:
			// Drain what is queued, then end.
			for {
				select {
				case m := <-t.queue:
					n.deliver(t, m)
				default:
					return
				}
			}
		}
	}
}

// errPermanent marks an answer that a retry cannot change.
var errPermanent = errors.New("permanent")

// deliver tries m until the webhook accepts it, refuses it for good (a
// redirect, or a 4xx other than 408 and 429), or MaxAttempts have failed. Between attempts it
// waits Backoff, doubled each time up to MaxBackoff, with ±25 % jitter so
// that analyzers retrying the same receiver spread out.
func (n *Notifier) deliver(t *target, m Message) {
	body, err := encode(t.hook.format(), m)
	if err != nil {
		n.log.Error("notification not encodable", "webhook", t.name, "rollout", m.Rollout.ID, "error", err)
		n.dropped.WithLabelValues(t.name, "rejected").Inc()
		return
	}
	wait := n.cfg.Backoff.D()
	for attempt := 1; ; attempt++ {
		err := n.post(t, m, body)
		if err == nil {
			n.sent.WithLabelValues(t.name).Inc()
			n.report(t, "sent")
			return
		}
		n.failed.WithLabelValues(t.name).Inc()
		n.report(t, "failed")
		if errors.Is(err, errPermanent) {
			n.dropped.WithLabelValues(t.name, "rejected").Inc()
			n.report(t, "rejected")
			n.log.Error("webhook refused a notification; not retried", "webhook", t.name, "rollout", m.Rollout.ID, "type", m.Type, "error", err)
			return
		}
		if attempt >= n.cfg.MaxAttempts {
			n.dropped.WithLabelValues(t.name, "attempts").Inc()
			n.report(t, "attempts")
			n.log.Error("notification given up", "webhook", t.name, "rollout", m.Rollout.ID, "type", m.Type, "attempts", attempt, "error", err)
			return
		}
		n.log.Warn("notification failed; retrying", "webhook", t.name, "rollout", m.Rollout.ID, "attempt", attempt, "retry_in", wait, "error", err)
		select {
		case <-time.After(jitter(wait)):
		case <-n.abandoned:
			n.dropped.WithLabelValues(t.name, "shutdown").Inc()
			return
		}
		wait = min(2*wait, n.cfg.MaxBackoff.D())
	}
}

func (n *Notifier) report(t *target, what string) {
	if n.outcome != nil {
		n.outcome(t.name, what)
	}
}

func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.75 + 0.5*rand.Float64()))
}

func encode(format string, m Message) ([]byte, error) {
	if format == FormatSlack {
		return json.Marshal(Slack(m))
	}
	return json.Marshal(m)
}

// post makes one attempt.
func (n *Notifier) post(t *target, m Message, body []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.Timeout.D())
	defer cancel()
	go func() {
		select {
		case <-n.abandoned:
			cancel()
		case <-ctx.Done():
		}
	}()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.hook.URL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%w: %w", errPermanent, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "llmcanary-analyzer")
	req.Header.Set(HeaderDelivery, m.ID)
	req.Header.Set(HeaderEvent, m.Type)
	if len(t.secret) > 0 {
		req.Header.Set(HeaderSignature, Sign(t.secret, body))
	}
	resp, err := n.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	switch s := resp.StatusCode; {
	case s/100 == 2:
		return nil
	case s == http.StatusRequestTimeout || s == http.StatusTooManyRequests || s/100 == 5:
		return fmt.Errorf("answered %d: %s", s, bytes.TrimSpace(snippet))
	default:
		return fmt.Errorf("%w: answered %d: %s", errPermanent, s, bytes.TrimSpace(snippet))
	}
}
