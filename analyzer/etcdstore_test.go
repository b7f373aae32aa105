package analyzer

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/llmcanary/llmcanary/internal/etcdtest"
)

// The tests of this file run a real embedded etcd (internal/etcdtest): the
// compare-and-swap, the lease and the election are etcd's own.

const testPrefix = "/test/analyzer"

// campaign wins the election for a new session of cli on a 2 s lease and
// returns the session and the fence of the win.
func campaign(t *testing.T, cli *clientv3.Client, name string) (*concurrency.Session, *Fence) {
	t.Helper()
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(2))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	el := concurrency.NewElection(sess, testPrefix+"/leader")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := el.Campaign(ctx, name); err != nil {
		t.Fatalf("campaign %s: %v", name, err)
	}
	return sess, &Fence{Key: el.Key(), Rev: el.Rev()}
}

func newEtcdStore(t *testing.T, cli *clientv3.Client) *EtcdStore {
	t.Helper()
	st, err := NewEtcdStore(cli, testPrefix)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func testRollout(id, model string) *Rollout {
	return &Rollout{ID: id, Model: model, Stable: "v1", Canary: "v2", Mode: ModeCanary, Status: RolloutRunning, Created: t0, Updated: t0}
}

func TestEtcdStoreRefusesEveryWriteWithoutTheLeadership(t *testing.T) {
	e := etcdtest.Start(t)
	st := newEtcdStore(t, e.Client)
	if err := st.Create(testRollout("r-1", "m")); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("create by a standby: %v, want ErrNotLeader", err)
	}
	if all, err := st.List(); err != nil || len(all) != 0 {
		t.Fatalf("after a refused create the store holds %d rollouts (%v)", len(all), err)
	}
}

func TestEtcdStoreSharesRolloutsBetweenAnalyzers(t *testing.T) {
	e := etcdtest.Start(t)
	leader, standby := newEtcdStore(t, e.Client), newEtcdStore(t, e.Client)
	_, fence := campaign(t, e.Client, "a")
	leader.SetFence(fence)
	if err := leader.Create(testRollout("r-1", "m")); err != nil {
		t.Fatal(err)
	}
	if _, err := leader.Update("r-1", func(x *Rollout) error { x.Stage = 1; return nil }); err != nil {
		t.Fatal(err)
	}
	got, err := standby.Get("r-1")
	if err != nil || got.Stage != 1 || got.Model != "m" {
		t.Fatalf("the standby reads %+v (%v), want stage 1 of model m", got, err)
	}
	if _, err := standby.Get("r-2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get of an unknown rollout: %v, want ErrNotFound", err)
	}
	if c := standby.Canaries(); len(c) != 1 || c[0] != "v2" {
		t.Fatalf("canaries %v", c)
	}
}

func TestEtcdStoreUpdateFailsWhenAnotherWriterChangedTheRolloutMeanwhile(t *testing.T) {
	e := etcdtest.Start(t)
	a, b := newEtcdStore(t, e.Client), newEtcdStore(t, e.Client)
	_, fence := campaign(t, e.Client, "a")
	a.SetFence(fence)
	b.SetFence(fence)
	if err := a.Create(testRollout("r-1", "m")); err != nil {
		t.Fatal(err)
	}
	_, err := a.Update("r-1", func(x *Rollout) error {
		// Between a's read and a's write, b writes.
		if _, err := b.Update("r-1", func(y *Rollout) error { y.LastError = "b was here"; return nil }); err != nil {
			t.Fatal(err)
		}
		x.Stage = 1
		return nil
	})
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("a's update over b's: %v, want ErrConflict", err)
	}
	got, _ := a.Get("r-1")
	if got.Stage != 0 || got.LastError != "b was here" {
		t.Fatalf("stored %+v: want b's change only", got)
	}
}

func TestEtcdStoreKeepsOneActiveRolloutPerModel(t *testing.T) {
	e := etcdtest.Start(t)
	st := newEtcdStore(t, e.Client)
	_, fence := campaign(t, e.Client, "a")
	st.SetFence(fence)
	if err := st.Create(testRollout("r-1", "m")); err != nil {
		t.Fatal(err)
	}
	if err := st.Create(testRollout("r-2", "m")); !errors.Is(err, ErrConflict) {
		t.Fatalf("second active rollout of m: %v, want ErrConflict", err)
	}
	if err := st.Create(testRollout("r-1", "other")); !errors.Is(err, ErrConflict) {
		t.Fatalf("an existing id: %v, want ErrConflict", err)
	}
	if _, err := st.Reserve("m"); !errors.Is(err, ErrConflict) {
		t.Fatalf("reserve of a model with an active rollout: %v, want ErrConflict", err)
	}
	if _, err := st.Update("r-1", func(x *Rollout) error { x.Status = RolloutRolledBack; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := st.Create(testRollout("r-2", "m")); err != nil {
		t.Fatalf("a new rollout after the first finished: %v", err)
	}
}

// TestEtcdStoreFencesADeposedLeader: once the leader's lease is gone (here
// revoked, as an expiry would), its writes fail even though it still
// holds its fence, and the next leader's succeed.
func TestEtcdStoreFencesADeposedLeader(t *testing.T) {
	e := etcdtest.Start(t)
	old, next := newEtcdStore(t, e.Client), newEtcdStore(t, e.Client)
	sess, fence := campaign(t, e.Client, "old")
	old.SetFence(fence)
	if err := old.Create(testRollout("r-1", "m")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e.Client.Revoke(ctx, sess.Lease()); err != nil {
		t.Fatal(err)
	}
	if _, err := old.Update("r-1", func(x *Rollout) error { x.Stage = 1; return nil }); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("the deposed leader's update: %v, want ErrNotLeader", err)
	}
	_, nf := campaign(t, e.Client, "next")
	next.SetFence(nf)
	if _, err := next.Update("r-1", func(x *Rollout) error { x.Stage = 2; return nil }); err != nil {
		t.Fatalf("the new leader's update: %v", err)
	}
	// The old leader campaigning again with a fence of its old term
	// changes nothing either.
	old.SetFence(fence)
	if _, err := old.Update("r-1", func(x *Rollout) error { x.Stage = 1; return nil }); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("an update fenced on an old term: %v, want ErrNotLeader", err)
	}
	if got, _ := next.Get("r-1"); got.Stage != 2 {
		t.Fatalf("stage %d, want the new leader's 2", got.Stage)
	}
}

// TestRunnerTakeoverFinishesTheDeposedLeadersMoveOnce kills the leader's
// runner right after the control plane took an advance and before the
// outcome was saved, deposes it, and lets a standby's runner take over on
// the same etcd: the standby finishes the advance without deciding again
// or publishing the weights again, the history holds one advance decision
// and one advance action, and the deposed runner can write nothing.
func TestRunnerTakeoverFinishesTheDeposedLeadersMoveOnce(t *testing.T) {
	e := etcdtest.Start(t)
	r := newRig(t)
	leaderStore, standbyStore := newEtcdStore(t, e.Client), newEtcdStore(t, e.Client)
	sess, fence := campaign(t, e.Client, "leader")
	leaderStore.SetFence(fence)
	leader := r.newRunner(leaderStore)
	r.runner = leader
	ro := r.start(t)

	r.source.m = window(1, 40000, 10000, testArm(), testArm())
	r.clock.add(11 * time.Minute)
	r.killAfterTrafficMoves(t, leader, ro.ID)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e.Client.Revoke(ctx, sess.Lease()); err != nil {
		t.Fatal(err)
	}
	if _, err := leader.Step(context.Background(), ro.ID); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("the deposed leader's look: %v, want ErrNotLeader", err)
	}

	_, nf := campaign(t, e.Client, "standby")
	standbyStore.SetFence(nf)
	standby := r.newRunner(standbyStore)
	moves := r.traffic.count()
	got, err := standby.Step(context.Background(), ro.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Stage != 1 || got.Pending != "" || got.Status != RolloutRunning {
		t.Fatalf("after the takeover: stage %d pending %q status %s, want stage 2 running", got.Stage+1, got.Pending, got.Status)
	}
	if r.traffic.count() != moves {
		t.Errorf("the takeover published the weights again: %+v", r.traffic.last())
	}
	decisions, actions := 0, 0
	seqs := map[uint64]bool{}
	for _, ev := range got.History {
		if ev.Action != ActionAdvance {
			continue
		}
		switch ev.Kind {
		case "decision":
			decisions++
		case "action":
			actions++
		}
		if seqs[ev.Seq] {
			t.Errorf("two entries with sequence %d", ev.Seq)
		}
		seqs[ev.Seq] = true
	}
	if decisions != 1 || actions != 1 {
		t.Fatalf("history holds %d advance decisions and %d advance actions, want one each: %+v", decisions, actions, got.History)
	}
}

// TestRunnerWritesALookOnlyOntoTheSequenceItWasTakenAt: an operator's
// pause lands between a look's read and its write; the look's decision
// is not stored on top of it.
func TestRunnerWritesALookOnlyOntoTheSequenceItWasTakenAt(t *testing.T) {
	r := newRig(t)
	ro := r.start(t)
	r.source.m = window(1, 40000, 10000, testArm(), testArm())
	r.clock.add(11 * time.Minute)
	r.runner.Store = interleaved{Store: r.runner.Store, before: func(s Store) {
		if _, err := s.Update(ro.ID, func(x *Rollout) error { x.Seq++; x.Status = RolloutPaused; return nil }); err != nil {
			t.Fatal(err)
		}
	}}
	_, err := r.runner.Step(context.Background(), ro.ID)
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("look over a concurrent change: %v, want ErrConflict", err)
	}
	got, _ := r.runner.Store.Get(ro.ID)
	if got.Status != RolloutPaused || got.Pending != "" || got.Stage != 0 || len(got.History) != 1 {
		t.Fatalf("stored %s stage %d pending %q with %d history entries: the look was written over the change", got.Status, got.Stage, got.Pending, len(got.History))
	}
}

// interleaved runs before (once) ahead of the first Update: another
// writer's change between a look's read and its write. A hand-written
// fake around the real store.
type interleaved struct {
	Store
	before func(Store)
}

func (s interleaved) Update(id string, change func(*Rollout) error) (*Rollout, error) {
	if s.before != nil {
		s.before(s.Store)
	}
	return s.Store.Update(id, change)
}
