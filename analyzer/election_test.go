package analyzer

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/llmcanary/llmcanary/internal/etcdtest"
)

// member is one Elector running in the background, with its terms
// reported on a channel.
type member struct {
	el     *Elector
	store  *EtcdStore
	terms  chan context.Context // the context of each term as it starts
	cancel context.CancelFunc
	done   chan struct{}
}

func startMember(t *testing.T, e *etcdtest.Server, id string) *member {
	t.Helper()
	st := newEtcdStore(t, e.Client)
	m := &member{store: st, terms: make(chan context.Context, 4), done: make(chan struct{}),
		el: &Elector{Client: e.Client, Prefix: testPrefix + "/leader", TTL: 2 * time.Second,
			Self: Member{ID: id, URL: "http://" + id}, Fence: st}}
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	go func() {
		defer close(m.done)
		_ = m.el.Run(ctx, func(ctx context.Context) {
			m.terms <- ctx
			<-ctx.Done()
		})
	}()
	t.Cleanup(m.stop)
	return m
}

func (m *member) stop() {
	m.cancel()
	<-m.done
}

func waitTerm(t *testing.T, m *member, within time.Duration) context.Context {
	t.Helper()
	select {
	case ctx := <-m.terms:
		return ctx
	case <-time.After(within):
		t.Fatalf("%s did not become the leader within %v", m.el.Self.ID, within)
		return nil
	}
}

func TestElectionHasOneLeaderAndTheStandbyNamesIt(t *testing.T) {
	e := etcdtest.Start(t)
	a := startMember(t, e, "a")
	waitTerm(t, a, 30*time.Second)
	b := startMember(t, e, "b")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if leader, ok, err := b.el.Leader(ctx); err != nil || !ok || leader.ID != "a" {
		t.Fatalf("b sees the leader %+v (%v, %v), want a", leader, ok, err)
	}
	if !a.el.Leading() || b.el.Leading() {
		t.Fatalf("leading: a %v, b %v; want a only", a.el.Leading(), b.el.Leading())
	}
	if err := a.el.Check(ctx); err != nil {
		t.Fatalf("the leader's check: %v", err)
	}
	var nl *NotLeaderError
	if err := b.el.Check(ctx); !errors.As(err, &nl) || nl.Leader.URL != "http://a" {
		t.Fatalf("the standby's check: %v, want a NotLeaderError naming http://a", err)
	}
	if err := b.store.Create(testRollout("r-1", "m")); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("the standby's write: %v, want ErrNotLeader", err)
	}
	if err := a.store.Create(testRollout("r-1", "m")); err != nil {
		t.Fatalf("the leader's write: %v", err)
	}
}

func TestElectionStandbyLeadsWhenTheLeaderStops(t *testing.T) {
	e := etcdtest.Start(t)
	a := startMember(t, e, "a")
	waitTerm(t, a, 30*time.Second)
	b := startMember(t, e, "b")
	a.stop() // resigns and revokes its lease
	start := time.Now()
	waitTerm(t, b, 10*time.Second)
	t.Logf("b leads %v after a stopped", time.Since(start))
	if a.el.Leading() {
		t.Fatal("a still leads after it stopped")
	}
	if err := a.store.Create(testRollout("r-1", "m")); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("the stopped leader's write: %v, want ErrNotLeader", err)
	}
}

// TestElectionLeaderStopsActingWhenItsLeaseIsGone revokes the leader's
// lease behind its back (as an expiry would): its term ends, its writes
// fail, and the standby leads.
func TestElectionLeaderStopsActingWhenItsLeaseIsGone(t *testing.T) {
	e := etcdtest.Start(t)
	a := startMember(t, e, "a")
	term := waitTerm(t, a, 30*time.Second)
	b := startMember(t, e, "b")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := e.Client.Get(ctx, a.el.prefix(), firstCreate()...)
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("leader key: %v", err)
	}
	if _, err := e.Client.Revoke(ctx, clientLease(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-term.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the leader kept acting 5 s after its lease was revoked (lease 2 s)")
	}
	if a.el.Leading() {
		t.Fatal("a reports leading after its term ended")
	}
	waitTerm(t, b, 10*time.Second)
	if err := a.store.Create(testRollout("r-1", "m")); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("the deposed leader's write: %v, want ErrNotLeader", err)
	}
}

func firstCreate() []clientv3.OpOption { return clientv3.WithFirstCreate() }

func clientLease(id int64) clientv3.LeaseID { return clientv3.LeaseID(id) }
