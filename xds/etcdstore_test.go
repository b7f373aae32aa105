package xds

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/internal/config"
	"github.com/llmcanary/llmcanary/internal/etcdtest"
	"github.com/llmcanary/llmcanary/internal/procs"
)

// These tests run against a real embedded etcd member: the compare-and-swap
// and the watch are etcd's own.

func etcdOptions(srv *etcdtest.Server, prefix string) EtcdOptions {
	return EtcdOptions{Endpoints: srv.Endpoints, Prefix: prefix, DialTimeout: config.Duration(5 * time.Second)}
}

func openEtcd(t *testing.T, o EtcdOptions) *EtcdStore {
	t.Helper()
	s, err := OpenEtcdStore(context.Background(), o, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func setStable(w float64) func(*State) error {
	return func(s *State) error { s.Models["llama"] = testModel(w); return nil }
}

func TestEtcdStoreStateSurvivesReopenAndStartsEmptyUnderANewPrefix(t *testing.T) {
	srv := etcdtest.Start(t)
	a := openEtcd(t, etcdOptions(srv, "/fleet-a/"))
	for _, w := range []float64{98, 95, 90} {
		if _, err := a.Update(0, "test", "step", setStable(w), nil); err != nil {
			t.Fatal(err)
		}
	}
	s := openEtcd(t, etcdOptions(srv, "/fleet-a/")).State()
	if s.Revision != 3 || s.Models["llama"].Weights["v2"] != 10 {
		t.Fatalf("reopened: revision %d weights %v; want revision 3 with v2=10", s.Revision, s.Models["llama"].Weights)
	}
	if s := openEtcd(t, etcdOptions(srv, "/fleet-b/")).State(); s.Revision != 0 || len(s.Models) != 0 {
		t.Fatalf("another prefix sees revision %d, %d models; want an empty state", s.Revision, len(s.Models))
	}
}

func TestEtcdStoreStaleIfMatchFailsAndAWriteLostToAnotherReplicaIsAppliedToTheNewerState(t *testing.T) {
	srv := etcdtest.Start(t)
	a, b := openEtcd(t, etcdOptions(srv, "/x/")), openEtcd(t, etcdOptions(srv, "/x/"))
	if _, err := a.Update(0, "alice", "create", setStable(100), nil); err != nil {
		t.Fatal(err)
	}
	// b follows nothing, so it still holds revision 0 when it writes.
	if b.State().Revision != 0 {
		t.Fatal("b saw a's change without following")
	}
	// Its change applies to revision 0 as well, so only the
	// compare-and-swap notices that revision 1 exists.
	var seen []uint64
	_, err := b.Update(0, "bob", "add qwen", func(s *State) error {
		seen = append(seen, s.Revision)
		m := testModel(100)
		m.Name = "qwen"
		s.Models["qwen"] = m
		return nil
	}, nil)
	if err != nil {
		t.Fatalf("a write lost to another replica was not retried on the newer state: %v", err)
	}
	if s := b.State(); s.Revision != 2 || s.Models["llama"] == nil || s.Models["qwen"] == nil || fmt.Sprint(seen) != "[0 1]" {
		t.Fatalf("b after its write: revision %d, models %v, change applied to revisions %v; want revision 2 with both models, applied to 0 then 1",
			s.Revision, s.ModelNames(), seen)
	}
	// a still holds revision 1: If-Match 1 is stale, If-Match 2 (read
	// through b) is current even though a has not seen it yet.
	if _, err := a.Update(1, "alice", "stale", setStable(50), nil); !errors.Is(err, ErrRevisionChanged) {
		t.Fatalf("stale If-Match: %v, want ErrRevisionChanged", err)
	}
	st, err := a.Update(2, "alice", "current", setStable(80), nil)
	if err != nil || st.Revision != 3 {
		t.Fatalf("If-Match of a revision written through the other replica: %v (state %+v)", err, st)
	}
}

func TestEtcdStoreRejectedChangeWritesNothing(t *testing.T) {
	srv := etcdtest.Start(t)
	a := openEtcd(t, etcdOptions(srv, "/x/"))
	if _, err := a.Update(0, "test", "create", setStable(100), nil); err != nil {
		t.Fatal(err)
	}
	_, err := a.Update(0, "test", "unpublishable", setStable(10), func(*State) (func() error, error) {
		return nil, errors.New("envoy would reject it")
	})
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("unpublishable state: %v, want ErrInvalid", err)
	}
	cs, err := a.Changes()
	if err != nil {
		t.Fatal(err)
	}
	if s := openEtcd(t, etcdOptions(srv, "/x/")).State(); s.Revision != 1 || len(cs) != 1 {
		t.Fatalf("etcd holds revision %d and %d changes; want the last accepted state and its one change", s.Revision, len(cs))
	}
}

func TestEtcdStoreFollowPublishesAnotherReplicasChangesInRevisionOrder(t *testing.T) {
	srv := etcdtest.Start(t)
	a, b := openEtcd(t, etcdOptions(srv, "/x/")), openEtcd(t, etcdOptions(srv, "/x/"))
	if _, err := a.Update(0, "test", "before b follows", setStable(100), nil); err != nil {
		t.Fatal(err)
	}
	got := make(chan *State, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b.Follow(ctx, func(s *State) error { got <- s; return nil })
	for _, w := range []float64{95, 90} {
		if _, err := a.Update(0, "test", "step", setStable(w), nil); err != nil {
			t.Fatal(err)
		}
	}
	// b opened before revision 1 was written, so it publishes 1, 2, 3.
	for want := uint64(1); want <= 3; want++ {
		awaitRevision(t, got, want)
	}
	if s := b.State(); s.Revision != 3 || s.Models["llama"].Weights["v2"] != 10 {
		t.Fatalf("b holds revision %d weights %v", s.Revision, s.Models["llama"].Weights)
	}
}

func TestEtcdStoreAuditTrailHoldsEveryReplicasChangesInRevisionOrder(t *testing.T) {
	srv := etcdtest.Start(t)
	a, b := openEtcd(t, etcdOptions(srv, "/x/")), openEtcd(t, etcdOptions(srv, "/x/"))
	for i, s := range []*EtcdStore{a, b, a, b} {
		if _, err := s.Update(0, fmt.Sprintf("actor-%d", i), fmt.Sprintf("step %d", i), setStable(float64(100-i)), nil); err != nil {
			t.Fatal(err)
		}
	}
	cs, err := b.Changes()
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 4 {
		t.Fatalf("%d changes, want 4: %+v", len(cs), cs)
	}
	for i, c := range cs {
		if c.Revision != uint64(i+1) || c.Actor != fmt.Sprintf("actor-%d", i) || c.Summary != fmt.Sprintf("step %d", i) || c.Time.IsZero() {
			t.Fatalf("change %d is %+v", i, c)
		}
	}
}

func TestEtcdStoreConcurrentWritersThroughTwoReplicasLoseNoChange(t *testing.T) {
	srv := etcdtest.Start(t)
	a, b := openEtcd(t, etcdOptions(srv, "/x/")), openEtcd(t, etcdOptions(srv, "/x/"))
	if _, err := a.Update(0, "test", "create", setStable(100), nil); err != nil {
		t.Fatal(err)
	}
	// Each writer adds one endpoint to v1; every addition must survive.
	const per = 10
	errc := make(chan error, 2*per)
	for i := range 2 * per {
		s := []*EtcdStore{a, b}[i%2]
		go func() {
			_, err := s.Update(0, "test", "add endpoint", func(st *State) error {
				m, ok := st.Models["llama"]
				if !ok {
					return fmt.Errorf("%w: model llama", ErrNotFound)
				}
				v := &m.Versions[0]
				v.Endpoints = append(v.Endpoints, fmt.Sprintf("127.0.0.1:%d", 9000+i))
				return nil
			}, nil)
			errc <- err
		}()
	}
	for range 2 * per {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	s := openEtcd(t, etcdOptions(srv, "/x/")).State()
	if s.Revision != 1+2*per || len(s.Models["llama"].Versions[0].Endpoints) != 1+2*per {
		t.Fatalf("revision %d with %d endpoints; want %d of each", s.Revision, len(s.Models["llama"].Versions[0].Endpoints), 1+2*per)
	}
}

func TestEtcdStoreUnreachableAtStartIsAClearError(t *testing.T) {
	ports, err := procs.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	o := EtcdOptions{Endpoints: []string{fmt.Sprintf("http://127.0.0.1:%d", ports[0])}, Prefix: "/x/", DialTimeout: config.Duration(500 * time.Millisecond)}
	_, err = OpenEtcdStore(context.Background(), o, quiet)
	if err == nil || !strings.Contains(err.Error(), "unreachable") || !strings.Contains(err.Error(), o.Endpoints[0]) {
		t.Fatalf("open with etcd down: %v; want an error naming the endpoint as unreachable", err)
	}
}

func TestEtcdStoreRefusesAStoredStateThatDoesNotDecode(t *testing.T) {
	srv := etcdtest.Start(t)
	srv.Put(t, "/x/state", `{"revision": 4, "models": {"llama": {`)
	_, err := OpenEtcdStore(context.Background(), etcdOptions(srv, "/x/"), quiet)
	if err == nil || !strings.Contains(err.Error(), "corrupt") || !strings.Contains(err.Error(), "/x/state") {
		t.Fatalf("corrupt state in etcd opened: %v", err)
	}
}

func TestEtcdOptionsValidate(t *testing.T) {
	good := EtcdOptions{Endpoints: []string{"http://127.0.0.1:2379"}, Prefix: "/p/", DialTimeout: config.Duration(time.Second)}
	cases := []struct {
		name string
		edit func(*EtcdOptions)
		want string
	}{
		{"complete", func(*EtcdOptions) {}, ""},
		{"no endpoints: the file store, nothing else checked", func(o *EtcdOptions) { *o = EtcdOptions{} }, ""},
		{"empty prefix", func(o *EtcdOptions) { o.Prefix = "" }, "--etcd-prefix"},
		{"zero dial timeout", func(o *EtcdOptions) { o.DialTimeout = 0 }, "--etcd-dial-timeout"},
		{"certificate without key", func(o *EtcdOptions) { o.Cert = "c.pem" }, "--etcd-key"},
		{"blank endpoint", func(o *EtcdOptions) { o.Endpoints = append(o.Endpoints, " ") }, "empty endpoint"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := good
			c.edit(&o)
			err := o.Validate()
			if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
				t.Fatalf("Validate() = %v, want %q", err, c.want)
			}
		})
	}
}

func TestEtcdStoreServesTheLastStateWhileEtcdIsAwayAndCatchesUpWhenItIsBack(t *testing.T) {
	srv := etcdtest.Start(t)
	o := etcdOptions(srv, "/x/")
	o.DialTimeout = config.Duration(time.Second)
	a, b := openEtcd(t, o), openEtcd(t, o)
	got := make(chan *State, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b.Follow(ctx, func(s *State) error { got <- s; return nil })
	if _, err := a.Update(0, "test", "create", setStable(100), nil); err != nil {
		t.Fatal(err)
	}
	awaitRevision(t, got, 1)

	srv.Stop()
	if _, err := a.Update(0, "test", "during the outage", setStable(90), nil); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("change while etcd is away: %v, want ErrUnavailable", err)
	}
	if _, err := b.Changes(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("audit trail while etcd is away: %v, want ErrUnavailable", err)
	}
	if s := b.State(); s.Revision != 1 || s.Models["llama"].Weights["v1"] != 100 {
		t.Fatalf("b while etcd is away holds revision %d %v, want the last state", s.Revision, s.Models["llama"].Weights)
	}

	srv.Restart(t)
	// The first writes after the restart may still meet a closed
	// connection; the client reconnects on its own.
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := a.Update(0, "test", "after the outage", setStable(80), nil)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("change after etcd came back: %v", err)
		}
	}
	awaitRevision(t, got, 2)
	if s := b.State(); s.Models["llama"].Weights["v2"] != 20 {
		t.Fatalf("b caught up to weights %v, want v2=20", s.Models["llama"].Weights)
	}
}

// awaitRevision waits for a published state and checks its revision.
func awaitRevision(t *testing.T, got <-chan *State, want uint64) {
	t.Helper()
	select {
	case s := <-got:
		if s.Revision != want {
			t.Fatalf("published revision %d, want %d", s.Revision, want)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("revision %d was not published", want)
	}
}

// A replica that starts following after etcd compacted the history since
// the state key's last write reads the state afresh and keeps following.
func TestEtcdStoreFollowsAcrossACompactedHistory(t *testing.T) {
	srv := etcdtest.Start(t)
	a := openEtcd(t, etcdOptions(srv, "/x/"))
	if _, err := a.Update(0, "test", "create", setStable(100), nil); err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	b, err := OpenEtcdStore(context.Background(), etcdOptions(srv, "/x/"), slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := a.Update(0, "test", "step", setStable(95), nil); err != nil {
		t.Fatal(err)
	}
	// Other keys move etcd's revision on; then history is compacted up to
	// now, past the revision b would watch from.
	for i := range 5 {
		srv.Put(t, fmt.Sprintf("/other/%d", i), "x")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := srv.Client.Get(ctx, "/other/4")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Client.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	got := make(chan *State, 10)
	b.Follow(ctx, func(s *State) error { got <- s; return nil })
	awaitRevision(t, got, 2)
	if _, err := a.Update(0, "test", "after the compaction", setStable(90), nil); err != nil {
		t.Fatal(err)
	}
	awaitRevision(t, got, 3)
	// One watch met the compaction; the one after it started past it.
	if n := strings.Count(logs.String(), "reading it afresh"); n != 1 {
		t.Fatalf("the watch restarted %d times, want once:\n%s", n, logs.String())
	}
}

// lockedBuffer is a bytes.Buffer safe for a logger's concurrent writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
