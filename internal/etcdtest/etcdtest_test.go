package etcdtest

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func TestCompareAndSwapSeesTheOtherWriter(t *testing.T) {
	s := Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s.Put(t, "k", "a")
	got, err := s.Client.Get(ctx, "k")
	if err != nil || len(got.Kvs) != 1 {
		t.Fatalf("get: %v %v", got, err)
	}
	rev := got.Kvs[0].ModRevision
	s.Put(t, "k", "b") // another writer
	txn, err := s.Client.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision("k"), "=", rev)).Then(clientv3.OpPut("k", "c")).Commit()
	if err != nil {
		t.Fatal(err)
	}
	if txn.Succeeded {
		t.Fatal("a compare-and-swap on a stale revision succeeded")
	}
}
