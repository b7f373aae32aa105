package analyzer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrNotLeader is returned by a write on an analyzer that does not hold
// the leadership (see Elector): a standby, or a leader whose lease ran out.
var ErrNotLeader = errors.New("not the leader")

// NotLeaderError is ErrNotLeader with the leader this analyzer knows of,
// for the rollout API to send the caller there.
type NotLeaderError struct {
	// Leader is the current leader; zero when there is none right now
	// (an election is under way).
	Leader Member
}

func (e *NotLeaderError) Error() string {
	if e.Leader.URL == "" {
		return "this analyzer is a standby and no analyzer leads right now; retry in a lease time"
	}
	return fmt.Sprintf("this analyzer is a standby; the leader is %s at %s", e.Leader.ID, e.Leader.URL)
}

// Is makes errors.Is(err, ErrNotLeader) true.
func (e *NotLeaderError) Is(target error) bool { return target == ErrNotLeader }

// Fence is the leadership a write is conditioned on: the leader's key in
// the election and the revision that created it. The key lives on the
// leader's lease, so once the lease is gone (expired or revoked) the
// comparison fails and a deposed leader's write changes nothing.
type Fence struct {
	Key string
	Rev int64
}

func (f *Fence) cmp() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(f.Key), "=", f.Rev)
}

// EtcdStore keeps the rollouts in etcd so that every analyzer of a group
// reads the same ones and a standby takes over a running rollout where the
// leader left it. Each rollout is one JSON value at <prefix>/rollouts/<id>;
// <prefix>/active/<model> names a model's active (running or paused)
// rollout, so that "one active rollout per model" holds in etcd itself.
//
// Every write is one transaction that commits only if (1) the rollout's
// key is at the revision the change was applied to (compare-and-swap) and
// (2) the fence holds: the writer's election key still exists with the
// creation revision it won with. Without a fence (SetFence(nil): a
// standby) every write fails with ErrNotLeader; reads work on every
// analyzer and always come from etcd.
//
// Watchers (OnChange) see the changes this store wrote, in order, so the
// stage log, the decision log, the metrics and the notifications happen
// once, on the leader that made the change. Safe for concurrent use.
type EtcdStore struct {
	cli     *clientv3.Client
	prefix  string
	timeout time.Duration

	mu       sync.Mutex // serialises writes, so watchers see them in order
	fence    *Fence
	reserved map[string]bool
	watchers []*watcher
}

// NewEtcdStore returns a store under prefix (e.g. "/llmcanary/analyzer").
func NewEtcdStore(cli *clientv3.Client, prefix string) (*EtcdStore, error) {
	prefix = strings.TrimRight(prefix, "/")
	if cli == nil {
		return nil, errors.New("etcd store: no client")
	}
	if prefix == "" {
		return nil, errors.New("etcd store: the prefix must not be empty")
	}
	return &EtcdStore{cli: cli, prefix: prefix, timeout: 10 * time.Second, reserved: map[string]bool{}}, nil
}

// SetFence sets the leadership every write is conditioned on; nil makes
// every write fail with ErrNotLeader. The Elector sets it when it wins
// and clears it before anything else when the term ends.
func (s *EtcdStore) SetFence(f *Fence) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fence = f
}

// OnChange registers f to see every change this store writes from now on
// (before is nil for a new rollout); see RolloutStore.OnChange for the
// contract. It returns the function that unregisters f.
func (s *EtcdStore) OnChange(f func(before, after *Rollout)) (remove func()) {
	return addWatcher(&s.mu, &s.watchers, f)
}

func (s *EtcdStore) rolloutKey(id string) string   { return s.prefix + "/rollouts/" + id }
func (s *EtcdStore) activeKey(model string) string { return s.prefix + "/active/" + model }

func (s *EtcdStore) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), s.timeout)
}

// get reads one rollout and the revision of its key.
func (s *EtcdStore) get(ctx context.Context, id string) (*Rollout, int64, error) {
	resp, err := s.cli.Get(ctx, s.rolloutKey(id))
	if err != nil {
		return nil, 0, fmt.Errorf("etcd store: get %s: %w", id, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, fmt.Errorf("%w: rollout %q does not exist", ErrNotFound, id)
	}
	var r Rollout
	if err := json.Unmarshal(resp.Kvs[0].Value, &r); err != nil {
		return nil, 0, fmt.Errorf("etcd store: decode %s: %w", id, err)
	}
	return &r, resp.Kvs[0].ModRevision, nil
}

// Get returns one rollout as etcd holds it.
func (s *EtcdStore) Get(id string) (*Rollout, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	r, _, err := s.get(ctx, id)
	return r, err
}

// List returns every rollout, newest first.
func (s *EtcdStore) List() ([]*Rollout, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	resp, err := s.cli.Get(ctx, s.prefix+"/rollouts/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("etcd store: list: %w", err)
	}
	out := make([]*Rollout, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var r Rollout
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			return nil, fmt.Errorf("etcd store: decode %s: %w", kv.Key, err)
		}
		out = append(out, &r)
	}
	sortNewestFirst(out)
	return out, nil
}

// Canaries returns the canary versions of the active rollouts (see
// RolloutStore.Canaries).
func (s *EtcdStore) Canaries() []string { return activeCanaries(s) }

// Reserve claims model while a Start sets up its traffic (see
// RolloutStore.Reserve). The reservation is in memory: only the leader
// starts rollouts, and Create checks the model in etcd again.
func (s *EtcdStore) Reserve(model string) (release func(), err error) {
	ctx, cancel := s.ctx()
	defer cancel()
	resp, err := s.cli.Get(ctx, s.activeKey(model))
	if err != nil {
		return nil, fmt.Errorf("etcd store: %w", err)
	}
	return reserveModel(&s.mu, s.reserved, model, func() error {
		if len(resp.Kvs) > 0 {
			return activeConflict(model, string(resp.Kvs[0].Value))
		}
		return nil
	})
}

func activeConflict(model, id string) error {
	return fmt.Errorf("%w: model %q already has the active rollout %s; finish or abort it first", ErrConflict, model, id)
}

// Create stores a new rollout, and claims its model when it is active. It
// fails with ErrConflict when the id exists or the model has an active
// rollout, with ErrNotLeader without the fence.
func (s *EtcdStore) Create(r *Rollout) error {
	if strings.ContainsAny(r.ID, `/\`) || r.ID == "" || strings.HasPrefix(r.ID, ".") {
		return fmt.Errorf("%w: rollout id %q", ErrInvalid, r.ID)
	}
	c, err := copyRollout(r)
	if err != nil {
		return err
	}
	b, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("etcd store: encode %s: %w", r.ID, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fence == nil {
		return s.notLeader()
	}
	key, active := s.rolloutKey(c.ID), s.activeKey(c.Model)
	conds := []clientv3.Cmp{s.fence.cmp(), clientv3.Compare(clientv3.CreateRevision(key), "=", 0)}
	ops := []clientv3.Op{clientv3.OpPut(key, string(b))}
	if c.Status.Active() {
		conds = append(conds, clientv3.Compare(clientv3.CreateRevision(active), "=", 0))
		ops = append(ops, clientv3.OpPut(active, c.ID))
	}
	ctx, cancel := s.ctx()
	defer cancel()
	resp, err := s.cli.Txn(ctx).If(conds...).Then(ops...).
		Else(clientv3.OpGet(s.fence.Key), clientv3.OpGet(key), clientv3.OpGet(active)).Commit()
	if err != nil {
		return fmt.Errorf("etcd store: create %s: %w", c.ID, err)
	}
	if !resp.Succeeded {
		if err := s.fenceLost((*clientv3.GetResponse)(resp.Responses[0].GetResponseRange())); err != nil {
			return err
		}
		if len(resp.Responses[1].GetResponseRange().Kvs) > 0 {
			return fmt.Errorf("%w: rollout %q exists", ErrConflict, c.ID)
		}
		other := ""
		if kvs := resp.Responses[2].GetResponseRange().Kvs; len(kvs) > 0 {
			other = string(kvs[0].Value)
		}
		return activeConflict(c.Model, other)
	}
	for _, w := range s.watchers {
		w.f(nil, c)
	}
	return nil
}

// Update applies change to the rollout as etcd holds it and writes the
// result if the key has not moved since it was read and the fence holds.
// A rollout that another writer changed in between fails with
// ErrConflict, a write without the leadership with ErrNotLeader; either
// way nothing changes.
func (s *EtcdStore) Update(id string, change func(*Rollout) error) (*Rollout, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fence == nil {
		return nil, s.notLeader()
	}
	ctx, cancel := s.ctx()
	defer cancel()
	cur, rev, err := s.get(ctx, id)
	if err != nil {
		return nil, err
	}
	c, err := applyChange(cur, change)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("etcd store: encode %s: %w", id, err)
	}
	key := s.rolloutKey(id)
	ops := []clientv3.Op{clientv3.OpPut(key, string(b))}
	if cur.Status.Active() && !c.Status.Active() {
		ops = append(ops, clientv3.OpDelete(s.activeKey(c.Model)))
	}
	resp, err := s.cli.Txn(ctx).
		If(s.fence.cmp(), clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
		Then(ops...).
		Else(clientv3.OpGet(s.fence.Key)).Commit()
	if err != nil {
		return nil, fmt.Errorf("etcd store: update %s: %w", id, err)
	}
	if !resp.Succeeded {
		if err := s.fenceLost((*clientv3.GetResponse)(resp.Responses[0].GetResponseRange())); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: rollout %s was changed by another writer meanwhile", ErrConflict, id)
	}
	for _, w := range s.watchers {
		w.f(cur, c)
	}
	return copyRollout(c)
}

// fenceLost returns ErrNotLeader when the fence's key, as read by a failed
// transaction, is gone or was created again; callers hold s.mu.
func (s *EtcdStore) fenceLost(r *clientv3.GetResponse) error {
	kvs := r.Kvs
	if len(kvs) == 0 || kvs[0].CreateRevision != s.fence.Rev {
		s.fence = nil
		return fmt.Errorf("%w: the leadership's lease is gone; the write was refused", ErrNotLeader)
	}
	return nil
}

func (s *EtcdStore) notLeader() error {
	return fmt.Errorf("%w: this analyzer does not hold the leadership", ErrNotLeader)
}
