package xds

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/llmcanary/llmcanary/internal/config"
	"github.com/llmcanary/llmcanary/internal/mtls"
)

// EtcdOptions say where the etcd cluster is that holds the desired state
// shared by control plane replicas. Without endpoints the state is the
// local file in data-dir. The JSON names follow the flags (--etcd-…).
type EtcdOptions struct {
	// Endpoints are etcd's client URLs (http://host:2379, or https with
	// the TLS files below).
	Endpoints []string `json:"endpoints,omitempty"`
	// Prefix starts every key the control plane writes: Prefix+"state"
	// holds the JSON of the whole State, Prefix+"changes/<revision>" one
	// Change of the audit trail. Fleets that share an etcd use different
	// prefixes.
	Prefix string `json:"prefix,omitempty"`
	// DialTimeout bounds connecting and every single request to etcd.
	DialTimeout config.Duration `json:"dial-timeout,omitempty"`
	// CA verifies etcd's server certificate (empty: the system's roots
	// when the endpoints are https); Cert and Key are the client
	// certificate etcd asks for with --client-cert-auth.
	CA   string `json:"ca,omitempty"`
	Cert string `json:"cert,omitempty"`
	Key  string `json:"key,omitempty"`
}

// DefaultEtcdPrefix is the key prefix of --etcd-prefix.
const DefaultEtcdPrefix = "/llmcanary/control/"

// Enabled reports whether the state lives in etcd.
func (o EtcdOptions) Enabled() bool { return len(o.Endpoints) > 0 }

// Validate reports every problem with the options, joined.
func (o EtcdOptions) Validate() error {
	if !o.Enabled() {
		return nil
	}
	var errs []error
	for _, e := range o.Endpoints {
		if strings.TrimSpace(e) == "" {
			errs = append(errs, errors.New("--etcd-endpoints holds an empty endpoint"))
		}
	}
	if o.Prefix == "" {
		errs = append(errs, errors.New("--etcd-prefix must not be empty: the control plane's keys need a place of their own"))
	}
	if o.DialTimeout <= 0 {
		errs = append(errs, errors.New("--etcd-dial-timeout must be positive"))
	}
	if (o.Cert == "") != (o.Key == "") {
		errs = append(errs, errors.New("--etcd-cert and --etcd-key go together"))
	}
	return errors.Join(errs...)
}

// client connects to etcd; the connection is made in the background, so
// an unreachable etcd shows at the first request.
func (o EtcdOptions) client() (*clientv3.Client, error) {
	cfg := clientv3.Config{
		Endpoints:   o.Endpoints,
		DialTimeout: o.DialTimeout.D(),
		// A dead connection is noticed in seconds, not at the next write.
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		Logger:               zap.NewNop(),
		// After an outage the connection is retried every 2 s at most,
		// not grpc's default of up to 2 minutes.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: o.DialTimeout.D(),
		})},
	}
	if o.CA != "" || o.Cert != "" {
		tc, err := mtls.ClientConfig(o.CA, o.Cert, o.Key)
		if err != nil {
			return nil, fmt.Errorf("etcd: %w", err)
		}
		cfg.TLS = tc
	}
	c, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	return c, nil
}

// EtcdStore keeps the desired state in etcd, shared by every control plane
// replica that uses the same endpoints and prefix. A write is one etcd
// transaction, compare-and-swap on the state key's ModRevision: it puts
// the new state and its audit trail entry together, or neither when
// another replica wrote first. Each replica keeps the last state it saw
// and watches the key, so a change made through any replica is published
// by all of them. While etcd is away the replica keeps serving (and its
// Envoys keep) the last state; changes fail with ErrUnavailable; the watch
// reconnects and catches up when etcd is back. Safe for concurrent use.
type EtcdStore struct {
	cli      *clientv3.Client
	timeout  time.Duration
	stateKey string
	changes  string // prefix of the audit trail's keys
	log      *slog.Logger

	mu     sync.Mutex
	state  *State
	modRev int64 // ModRevision of stateKey that state was read from (0: none yet)
	// seen is the etcd revision up to which this replica knows the state
	// key: a watch (re)starts after it. It moves past modRev as the rest
	// of etcd changes, so a restarted watch never asks for history that
	// etcd may have compacted since the key's last write.
	seen   int64
	follow func(*State) error
}

// maxCASAttempts bounds the retries of a write that keeps losing to other
// replicas; each attempt is against the newer state.
const maxCASAttempts = 20

// OpenEtcdStore connects to etcd and reads the state, or starts empty when
// the prefix holds none. An unreachable etcd is an error: a replica has no
// state of its own to serve instead. A stored state that does not decode
// or validate is an error, never replaced by an empty one.
func OpenEtcdStore(ctx context.Context, o EtcdOptions, log *slog.Logger) (*EtcdStore, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	cli, err := o.client()
	if err != nil {
		return nil, err
	}
	s := &EtcdStore{
		cli: cli, timeout: o.DialTimeout.D(), log: log,
		stateKey: o.Prefix + "state", changes: o.Prefix + "changes/",
		state: &State{Models: map[string]*Model{}},
	}
	rctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := cli.Get(rctx, s.stateKey)
	if err != nil {
		cli.Close()
		return nil, fmt.Errorf("store: etcd at %s is unreachable (%w); a replica has no state of its own to serve", strings.Join(o.Endpoints, ","), err)
	}
	if len(resp.Kvs) > 0 {
		if err := s.adoptLocked(resp.Kvs[0], false); err != nil {
			cli.Close()
			return nil, err
		}
	}
	s.seen = resp.Header.Revision
	return s, nil
}

// Close closes the connection to etcd; the watch started by Follow ends.
func (s *EtcdStore) Close() error { return s.cli.Close() }

// State returns a copy of the last state this replica saw.
func (s *EtcdStore) State() *State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state.Clone()
}

// Update implements Store.Update: the change is applied to the latest
// state this replica saw and written only if no other replica wrote since;
// otherwise the newer state is adopted (and published) and, when the
// caller gave no expected revision, the change is tried again on it. A
// change that fails is checked against etcd's state before the error is
// returned.
func (s *EtcdStore) Update(expect uint64, actor, summary string, change func(*State) error, prepare func(*State) (func() error, error)) (*State, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if expect != 0 && expect != s.state.Revision {
		// The caller may have read a revision this replica has not seen
		// yet: ask etcd before calling it stale.
		if err := s.refreshLocked(); err != nil {
			return nil, err
		}
	}
	for attempt := 1; ; attempt++ {
		if attempt > maxCASAttempts {
			return nil, fmt.Errorf("%w: the state moved on %d times in a row while this change was applied", ErrRevisionChanged, maxCASAttempts)
		}
		if expect != 0 && expect != s.state.Revision {
			return nil, fmt.Errorf("%w: expected revision %d, current is %d", ErrRevisionChanged, expect, s.state.Revision)
		}
		next, publish, err := nextState(s.state, change, prepare)
		if err != nil {
			// The change may fail only because this replica has not seen
			// a newer state yet (a model created through another one):
			// an error must come from the latest state.
			rev := s.modRev
			if rerr := s.refreshLocked(); rerr != nil || s.modRev == rev {
				return nil, err
			}
			continue
		}
		won, err := s.commitLocked(next, Change{Revision: next.Revision, Time: time.Now().UTC(), Actor: actor, Summary: summary})
		if err != nil {
			return nil, err
		}
		if !won {
			continue
		}
		if err := publish(); err != nil {
			return next.Clone(), fmt.Errorf("state %d saved but not published: %w", next.Revision, err)
		}
		return next.Clone(), nil
	}
}

// commitLocked writes next and its audit entry if the state key is still
// at the ModRevision this replica read. When another replica wrote first
// it adopts that state and reports false.
func (s *EtcdStore) commitLocked(next *State, c Change) (bool, error) {
	sb, err := json.Marshal(next)
	if err != nil {
		return false, fmt.Errorf("store: encode: %w", err)
	}
	cb, err := json.Marshal(c)
	if err != nil {
		return false, fmt.Errorf("store: encode: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(s.stateKey), "=", s.modRev)).
		Then(clientv3.OpPut(s.stateKey, string(sb)), clientv3.OpPut(s.changeKey(c.Revision), string(cb))).
		Else(clientv3.OpGet(s.stateKey)).
		Commit()
	if err != nil {
		return false, fmt.Errorf("%w: etcd: write revision %d: %w", ErrUnavailable, next.Revision, err)
	}
	if resp.Succeeded {
		s.state, s.modRev, s.seen = next, resp.Header.Revision, resp.Header.Revision
		return true, nil
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) == 0 {
		return false, fmt.Errorf("store: etcd key %s vanished; the control plane's state was deleted behind its back", s.stateKey)
	}
	if err := s.adoptLocked(kvs[0], true); err != nil {
		return false, err
	}
	s.seen = max(s.seen, resp.Header.Revision)
	return false, nil
}

// changeKey is the audit trail's key of a revision, zero-padded so that
// keys sort in revision order.
func (s *EtcdStore) changeKey(rev uint64) string {
	return s.changes + fmt.Sprintf("%020d", rev)
}

// refreshLocked reads the state from etcd and adopts it if it is newer.
func (s *EtcdStore) refreshLocked() error {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.stateKey)
	if err != nil {
		return fmt.Errorf("%w: etcd: read state: %w", ErrUnavailable, err)
	}
	if len(resp.Kvs) > 0 {
		if err := s.adoptLocked(resp.Kvs[0], true); err != nil {
			return err
		}
	}
	s.seen = max(s.seen, resp.Header.Revision)
	return nil
}

// adoptLocked makes the state stored in kv current if it is newer than the
// one this replica has, and publishes it through the function given to
// Follow when publish is set.
func (s *EtcdStore) adoptLocked(kv *mvccpb.KeyValue, publish bool) error {
	if kv.ModRevision <= s.modRev {
		return nil
	}
	st, err := decodeState(kv.Value, "etcd key "+string(kv.Key)+" at etcd revision "+strconv.FormatInt(kv.ModRevision, 10))
	if err != nil {
		return err
	}
	s.state, s.modRev = st, kv.ModRevision
	if publish && s.follow != nil {
		if err := s.follow(st.Clone()); err != nil {
			s.log.Error("state written by another replica not published", "revision", st.Revision, "error", err)
		}
	}
	return nil
}

// Follow implements Store.Follow: it watches the state key from the
// revision this replica last read, so no change is missed between opening
// the store and following it.
func (s *EtcdStore) Follow(ctx context.Context, publish func(*State) error) {
	s.mu.Lock()
	s.follow = publish
	s.mu.Unlock()
	go s.watch(ctx)
}

// watch adopts every newer state written to the key. clientv3 resumes a
// broken watch by itself from the next revision; when the watch ends with
// an error (the history it needs was compacted, the client lost its
// leader) the state is read afresh and watched again, after a backoff
// when the watch delivered nothing. It ends with ctx or the client.
func (s *EtcdStore) watch(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil && s.cli.Ctx().Err() == nil {
		s.mu.Lock()
		from := s.seen + 1
		s.mu.Unlock()
		delivered := false
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for resp := range s.cli.Watch(wctx, s.stateKey, clientv3.WithRev(from)) {
			if err := resp.Err(); err != nil {
				s.log.Warn("etcd watch of the desired state ended; reading it afresh", "error", err)
				break
			}
			s.mu.Lock()
			for _, ev := range resp.Events {
				if ev.Type != mvccpb.PUT {
					s.log.Error("the desired state's etcd key was deleted; keeping the last state", "key", s.stateKey)
					continue
				}
				if err := s.adoptLocked(ev.Kv, true); err != nil {
					s.log.Error("ignoring a state in etcd this replica cannot read", "error", err)
				}
				s.seen = max(s.seen, ev.Kv.ModRevision)
			}
			s.mu.Unlock()
			delivered = true
		}
		cancel()
		if ctx.Err() != nil || s.cli.Ctx().Err() != nil {
			return
		}
		s.mu.Lock()
		err := s.refreshLocked()
		s.mu.Unlock()
		if err != nil {
			s.log.Warn("etcd unreachable; serving the last state", "revision", s.State().Revision, "error", err)
		}
		if delivered {
			backoff = 100 * time.Millisecond
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// Changes returns the audit trail, oldest first.
func (s *EtcdStore) Changes() ([]Change, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.changes, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("%w: etcd: read audit trail: %w", ErrUnavailable, err)
	}
	out := make([]Change, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var c Change
		if err := json.Unmarshal(kv.Value, &c); err != nil {
			return nil, fmt.Errorf("store: audit trail entry %s is corrupt: %w", kv.Key, err)
		}
		out = append(out, c)
	}
	return out, nil
}
