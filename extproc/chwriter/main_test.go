package chwriter

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/internal/stack"
)

// One ClickHouse serves the tests that do not kill it; each test uses its
// own database. It starts on first use, so spool unit tests need none.
var (
	sharedOnce sync.Once
	sharedCH   *stack.ClickHouse
	sharedDir  string
	sharedErr  error
	dbSeq      atomic.Int64
)

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedCH != nil {
		sharedCH.Stop()
	}
	if sharedDir != "" {
		os.RemoveAll(sharedDir)
	}
	os.Exit(code)
}

func sharedClickHouse(tb testing.TB) *stack.ClickHouse {
	tb.Helper()
	sharedOnce.Do(func() {
		sharedDir, sharedErr = os.MkdirTemp("", "chwriter-clickhouse-")
		if sharedErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		sharedCH, sharedErr = stack.StartClickHouse(ctx, stack.ClickHouseOptions{Dir: sharedDir})
	})
	if sharedErr != nil {
		tb.Fatalf("start clickhouse (install it with make deps): %v", sharedErr)
	}
	return sharedCH
}

func startOwnClickHouse(tb testing.TB) *stack.ClickHouse {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ch, err := stack.StartClickHouse(ctx, stack.ClickHouseOptions{Dir: tb.TempDir()})
	if err != nil {
		tb.Fatalf("start clickhouse (install it with make deps): %v", err)
	}
	tb.Cleanup(func() { ch.Stop() })
	return ch
}

func newDatabase() string { return fmt.Sprintf("t%d_%d", os.Getpid(), dbSeq.Add(1)) }

func connect(tb testing.TB, ch *stack.ClickHouse) driver.Conn {
	tb.Helper()
	conn, err := ch.Conn(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

func countRows(tb testing.TB, conn driver.Conn, db, tbl string) (rows, distinct uint64) {
	tb.Helper()
	q := fmt.Sprintf("SELECT count(), uniqExact(request_id) FROM %s.%s", db, tbl)
	if err := conn.QueryRow(context.Background(), q).Scan(&rows, &distinct); err != nil {
		tb.Fatalf("%s: %v", q, err)
	}
	return rows, distinct
}

// waitFor polls cond until it holds; the timeout only bounds a failing test.
func waitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// makeRecord returns a record with every field set to a value derived
// from i, so a column mixed up with another shows in a round trip.
func makeRecord(i int, base time.Time) extproc.Record {
	r := extproc.Record{
		Time:             base.Add(time.Duration(i) * 1500 * time.Microsecond),
		RequestID:        fmt.Sprintf("req-%06d-%d", i, base.UnixNano()),
		Model:            []string{"llama", "mistral"}[i%2],
		Version:          []string{"v1", "v2", "v3"}[i%3],
		Cluster:          fmt.Sprintf("pool-%d", i%4),
		Path:             "/v1/chat/completions",
		Bucket:           uint64(i)*0x9E3779B97F4A7C15 + 1,
		Forced:           i%7 == 0,
		Category:         []string{"", "code", "chat"}[i%3],
		Streamed:         i%2 == 0,
		Status:           []int{200, 200, 429, 503}[i%4],
		Failure:          []string{"", "", extproc.FailureHTTP429, extproc.FailureHTTP5xx}[i%4],
		TTFTMs:           100 + float64(i)*0.25,
		TotalMs:          900 + float64(i),
		ITLMeanMs:        20.5,
		ITLP50Ms:         19.25,
		ITLP95Ms:         40.125,
		ITLMaxMs:         80 + float64(i%10),
		PromptTokens:     uint32(10 + i),
		CompletionTokens: uint32(50 + i%100),
		TokensFromUsage:  i%3 == 0,
		FinishReason:     []string{"stop", "length"}[i%2],
		Refusal:          i%11 == 0,
		CostUSD:          0.0001 * float64(i%50),
		ResponseBytes:    uint32(1000 + i),
		Chunks:           uint32(i % 60),
	}
	if i%5 == 0 {
		r.Captured = true
		r.Prompt = fmt.Sprintf("prompt %d: «héllo»", i)
		r.Completion = fmt.Sprintf("completion %d\nwith 'quotes'", i)
	}
	return r
}

func makeRecords(n int, base time.Time) []extproc.Record {
	out := make([]extproc.Record, n)
	for i := range out {
		out[i] = makeRecord(i, base)
	}
	return out
}
