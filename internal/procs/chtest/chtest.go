// Package chtest gives tests a real ClickHouse: one shared server per test
// binary for tests that leave it running (each in its own database), or a
// server of their own for tests that kill or restart it.
package chtest

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/llmcanary/llmcanary/internal/procs"
)

var (
	sharedOnce sync.Once
	sharedCH   *procs.ClickHouse
	sharedDir  string
	sharedErr  error
	dbSeq      atomic.Int64
)

// Main runs the tests, then stops the shared server. Call it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	if sharedCH != nil {
		sharedCH.Stop()
	}
	if sharedDir != "" {
		os.RemoveAll(sharedDir)
	}
	os.Exit(code)
}

// Shared returns the test binary's shared server, starting it on first use.
// A missing ClickHouse fails the test; it never skips.
func Shared(tb testing.TB) *procs.ClickHouse {
	tb.Helper()
	sharedOnce.Do(func() {
		sharedDir, sharedErr = os.MkdirTemp("", "llmcanary-clickhouse-")
		if sharedErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		sharedCH, sharedErr = procs.StartClickHouse(ctx, procs.ClickHouseOptions{Dir: sharedDir})
	})
	if sharedErr != nil {
		tb.Fatalf("start clickhouse (install it with make deps): %v", sharedErr)
	}
	return sharedCH
}

// Own starts a server for this test alone, stopped when it ends.
func Own(tb testing.TB) *procs.ClickHouse {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ch, err := procs.StartClickHouse(ctx, procs.ClickHouseOptions{Dir: tb.TempDir()})
	if err != nil {
		tb.Fatalf("start clickhouse (install it with make deps): %v", err)
	}
	tb.Cleanup(func() { ch.Stop() })
	return ch
}

// NewDatabase returns a database name no other test of any process uses.
func NewDatabase() string { return fmt.Sprintf("t%d_%d", os.Getpid(), dbSeq.Add(1)) }

// Connect opens a native connection closed when the test ends.
func Connect(tb testing.TB, ch *procs.ClickHouse) driver.Conn {
	tb.Helper()
	conn, err := ch.Conn(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

// Cluster starts n servers of their own as the shards of a cluster named
// name (each server's remote_servers config lists all of them), stopped
// when the test ends. A missing ClickHouse fails the test.
func Cluster(tb testing.TB, name string, n int) []*procs.ClickHouse {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Duration(n)*time.Second)
	defer cancel()
	dirs := make([]string, n)
	for i := range dirs {
		dirs[i] = tb.TempDir()
	}
	servers, err := procs.StartClickHouseCluster(ctx, name, dirs)
	if err != nil {
		tb.Fatalf("start clickhouse cluster (install it with make deps): %v", err)
	}
	tb.Cleanup(func() {
		for _, s := range servers {
			s.Stop()
		}
	})
	return servers
}

// ShardAddrs returns the servers' native-protocol addresses, in order.
func ShardAddrs(servers []*procs.ClickHouse) []string {
	out := make([]string, len(servers))
	for i, s := range servers {
		out[i] = s.Addr
	}
	return out
}
