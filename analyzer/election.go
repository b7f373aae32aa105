package analyzer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Member is one analyzer of a group as the election shows it: its
// identity and the base URL of its rollout API.
type Member struct {
	ID  string `json:"id"`
	URL string `json:"url"`
}

// Fencer is what the Elector fences: the store the leader writes through
// (EtcdStore).
type Fencer interface {
	SetFence(f *Fence)
}

// Elector makes one analyzer of a group the leader through an etcd
// election (go.etcd.io/etcd/client/v3/concurrency): each member campaigns
// with a session on a lease of TTL; the member whose key is oldest leads.
// The leader acts (Run's lead function runs) and its writes are fenced on
// its election key; the others are standbys that serve reads and wait.
//
// The leader stops acting before its lease can expire: it renews the
// lease itself every TTL/3 and takes the lease to end TTL after the
// renewal was sent (etcd counts from when it received it, which is
// later). When no renewal has succeeded and less than a quarter of TTL is
// left, or the session ends, the term ends: the fence is cleared first
// (every write fails from then on), then the lead function's context is
// cancelled and awaited, the leadership resigned and the lease revoked,
// and the member campaigns again. A killed leader's key goes with its
// lease, so a standby leads at most TTL after the last renewal.
type Elector struct {
	Client *clientv3.Client
	// Prefix is the election's key prefix, e.g. "/llmcanary/analyzer/leader".
	Prefix string
	// TTL is the lease; etcd grants at least about two seconds.
	TTL   time.Duration
	Self  Member
	Fence Fencer
	Log   *slog.Logger

	mu      sync.Mutex
	leading bool
}

// Leading reports whether this member leads now.
func (e *Elector) Leading() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.leading
}

// Check returns nil when this member leads, and otherwise a
// *NotLeaderError naming the leader: the Runner's Leading function.
func (e *Elector) Check(ctx context.Context) error {
	if e.Leading() {
		return nil
	}
	m, _, err := e.Leader(ctx)
	if err != nil {
		return fmt.Errorf("%w: %w", &NotLeaderError{}, err)
	}
	return &NotLeaderError{Leader: m}
}

// Leader returns the member that leads (the oldest key of the election),
// and false when no member campaigns.
func (e *Elector) Leader(ctx context.Context) (Member, bool, error) {
	resp, err := e.Client.Get(ctx, e.prefix(), clientv3.WithFirstCreate()...)
	if err != nil {
		return Member{}, false, fmt.Errorf("election: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return Member{}, false, nil
	}
	var m Member
	if err := json.Unmarshal(resp.Kvs[0].Value, &m); err != nil {
		return Member{}, false, fmt.Errorf("election: leader %s: %w", resp.Kvs[0].Key, err)
	}
	return m, true, nil
}

// prefix is the election's prefix as concurrency.Election spells its keys.
func (e *Elector) prefix() string { return strings.TrimRight(e.Prefix, "/") + "/" }

func (e *Elector) log() *slog.Logger {
	if e.Log != nil {
		return e.Log
	}
	return slog.Default()
}

func (e *Elector) setLeading(f *Fence) {
	e.Fence.SetFence(f)
	e.mu.Lock()
	e.leading = f != nil
	e.mu.Unlock()
}

// Run campaigns until ctx ends; in every term this member leads it calls
// lead with a context that ends with the term, and waits for lead to
// return before campaigning again. A failed session or campaign is
// retried after a second.
func (e *Elector) Run(ctx context.Context, lead func(ctx context.Context)) error {
	if e.Client == nil || e.Fence == nil || strings.Trim(e.Prefix, "/") == "" || e.Self.ID == "" {
		return errors.New("election: client, fence, prefix and member id are required")
	}
	if e.TTL < time.Second {
		return fmt.Errorf("election: lease %v is shorter than a second", e.TTL)
	}
	for ctx.Err() == nil {
		if err := e.term(ctx, lead); err != nil && ctx.Err() == nil {
			e.log().Warn("analyzer leadership: campaigning again", "member", e.Self.ID, "error", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
	return nil
}

// term campaigns once and, if elected, leads until the lease is at risk
// or ctx ends.
func (e *Elector) term(ctx context.Context, lead func(ctx context.Context)) error {
	ttl := int((e.TTL + time.Second - 1) / time.Second)
	sess, err := concurrency.NewSession(e.Client, concurrency.WithTTL(ttl), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("election: session: %w", err)
	}
	defer sess.Close() // revokes the lease: a standby need not wait for it to expire
	el := concurrency.NewElection(sess, strings.TrimRight(e.Prefix, "/"))
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sess.Done():
			cancel()
		case <-cctx.Done():
		}
	}()
	val, _ := json.Marshal(e.Self)
	if err := el.Campaign(cctx, string(val)); err != nil {
		return fmt.Errorf("election: campaign: %w", err)
	}
	fence := &Fence{Key: el.Key(), Rev: el.Rev()}
	e.setLeading(fence)
	e.log().Info("analyzer leadership: leading", "member", e.Self.ID, "lease_ttl", e.TTL)
	lctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); lead(lctx) }()
	reason := e.hold(lctx, sess)
	// Stop acting at once: no write passes the store from here on, then
	// the looks in flight are cancelled.
	e.setLeading(nil)
	stop()
	<-done
	rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer rcancel()
	_ = el.Resign(rctx)
	if ctx.Err() != nil {
		e.log().Info("analyzer leadership: resigned", "member", e.Self.ID)
		return nil
	}
	return fmt.Errorf("leadership lost: %s", reason)
}

// hold renews the session's lease every TTL/3 and returns why the term
// must end: the lease is about to expire without a renewal, the session
// ended, or ctx ended.
func (e *Elector) hold(ctx context.Context, sess *concurrency.Session) string {
	margin := e.TTL / 4
	deadline := time.Now() // the first renewal sets it; without one the term ends
	for {
		sent := time.Now()
		kctx, cancel := context.WithTimeout(ctx, e.TTL/3)
		resp, err := e.Client.KeepAliveOnce(kctx, sess.Lease())
		cancel()
		switch {
		case ctx.Err() != nil:
			return "stopped"
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			return "the lease is gone"
		case err == nil && resp.TTL > 0:
			deadline = sent.Add(time.Duration(resp.TTL) * time.Second)
		case err == nil:
			return "the lease is gone"
		default:
			e.log().Warn("analyzer leadership: lease renewal failed", "member", e.Self.ID, "error", err, "lease_left", time.Until(deadline))
		}
		stepDown := deadline.Add(-margin)
		if !time.Now().Before(stepDown) {
			return "no lease renewal succeeded in time"
		}
		wait := min(e.TTL/3, time.Until(stepDown))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return "stopped"
		case <-sess.Done():
			t.Stop()
			return "the session ended"
		case <-t.C:
		}
	}
}
