//go:build integration

package procs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestClickHouseKeepsDataAcrossKillAndRestart starts the real server, writes
// a row, kills the server as an outage would, restarts it in the same
// directory and reads the row back.
func TestClickHouseKeepsDataAcrossKillAndRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ch, err := StartClickHouse(ctx, ClickHouseOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("start clickhouse (install it with make deps): %v", err)
	}
	t.Cleanup(func() { ch.Stop() })

	conn, err := ch.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"CREATE DATABASE IF NOT EXISTS t",
		"CREATE TABLE t.kept (d Date, v String) ENGINE = MergeTree PARTITION BY d ORDER BY v",
	} {
		if err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	batch, err := conn.PrepareBatch(ctx, "INSERT INTO t.kept (d, v)")
	if err != nil {
		t.Fatal(err)
	}
	if err := batch.Append(time.Now(), "survives"); err != nil {
		t.Fatal(err)
	}
	if err := batch.Send(); err != nil {
		t.Fatal(err)
	}
	conn.Close()

	if err := ch.Kill(); err != nil {
		t.Fatal(err)
	}
	if ch.Running() {
		t.Fatal("server still running after Kill")
	}
	if _, err := ch.Conn(ctx); err == nil {
		t.Fatal("connection succeeded while the server is killed")
	}

	if err := ch.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	conn, err = ch.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var v string
	if err := conn.QueryRow(ctx, "SELECT v FROM t.kept").Scan(&v); err != nil {
		t.Fatal(err)
	}
	if v != "survives" {
		t.Fatalf("row after restart = %q, want %q", v, "survives")
	}
}

func TestClickHouseListensOnLoopbackOnly(t *testing.T) {
	dir := t.TempDir()
	c := &ClickHouse{Dir: dir, NativePort: 1, HTTPPort: 2}
	if err := c.writeConfig(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "config.xml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(b)
	for _, want := range []string{
		"<listen_host>127.0.0.1</listen_host>",
		"<tcp_port>1</tcp_port>",
		"<http_port>2</http_port>",
		"<path>" + dir + "/data/</path>",
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("config.xml lacks %s", want)
		}
	}
	if strings.Count(cfg, "<listen_host>") != 1 {
		t.Error("config.xml listens on more than loopback")
	}
	if strings.Contains(cfg, "interserver") {
		t.Error("config.xml enables interserver replication")
	}
}

func TestClickHouseStartFailsWithErrorLogWhenPortIsTaken(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	first, err := StartClickHouse(ctx, ClickHouseOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("start clickhouse (install it with make deps): %v", err)
	}
	t.Cleanup(func() { first.Stop() })

	_, err = StartClickHouse(ctx, ClickHouseOptions{Dir: t.TempDir(), NativePort: first.NativePort})
	if err == nil {
		t.Fatal("second server on a taken port started")
	}
	if !strings.Contains(err.Error(), "Address already in use") {
		t.Fatalf("error does not carry the server's log: %v", err)
	}
}

func TestClickHouseMissingBinaryIsReported(t *testing.T) {
	t.Setenv("LLMCANARY_CLICKHOUSE", filepath.Join(t.TempDir(), "nope"))
	_, err := StartClickHouse(context.Background(), ClickHouseOptions{Dir: t.TempDir()})
	if !errors.Is(err, ErrBinaryMissing) {
		t.Fatalf("err = %v, want ErrBinaryMissing", err)
	}
}
