// Package chdbtest gives tests a current ClickHouse engine beside the
// project's real 18.16 server: chDB (the PyPI package chdb, which embeds
// ClickHouse 26.x in-process) runs in a Python process the test starts,
// behind Conn, a driver.Conn. The product's own code (schema creation,
// queries, batch inserts) runs on it unchanged, so a test can check that
// every statement also runs on a modern server and answers as 18.16 does.
//
// Conn is a test transport, not a client: chDB has no network server, so
// statements travel as text to the Python driver (driver.py) and results
// come back as ClickHouse's JSONCompact. Positional arguments are bound
// into the text client side, as clickhouse-go does over the native
// protocol; batches become one INSERT … VALUES. The engine is real.
package chdbtest

import (
	"bufio"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

//go:embed driver.py
var driverPy []byte

// Python is the interpreter that runs the driver: $LLMCANARY_PYTHON, else
// python3 on PATH (make puts .tools/venv/bin, where make deps installs
// chdb, first).
func Python() string {
	if p := os.Getenv("LLMCANARY_PYTHON"); p != "" {
		return p
	}
	return "python3"
}

// Conn is one chDB session. Safe for concurrent use: statements run one at
// a time. The driver.Conn methods it does not implement (QueryFormat,
// InsertFormat, AsyncInsert, Select, Contributors, ServerVersion) panic.
type Conn struct {
	driver.Conn // nil: only the methods below are implemented

	mu  sync.Mutex
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

var _ driver.Conn = (*Conn)(nil)

// Start starts a chDB session with its data in a directory of the test's,
// ended with the test. It fails the test with a clear message when chdb is
// not installed; it never skips.
func Start(tb testing.TB) *Conn {
	tb.Helper()
	dir := tb.TempDir()
	c, err := start(dir)
	if err != nil {
		tb.Fatalf("start chDB (make deps installs the chdb package into .tools/venv): %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

func start(dir string) (*Conn, error) {
	script := filepath.Join(dir, "driver.py")
	if err := os.WriteFile(script, driverPy, 0o644); err != nil {
		return nil, err
	}
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		return nil, err
	}
	cmd := exec.Command(Python(), script, data)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("run %s: %w", Python(), err)
	}
	c := &Conn{cmd: cmd, in: in, out: bufio.NewReaderSize(out, 1<<20)}
	if _, err := c.run("SELECT version()"); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// result is one statement's answer from the driver.
type result struct {
	Meta []struct {
		Name string `json:"name"`
		Type string `json:"type"`
	} `json:"meta"`
	Data  [][]any `json:"data"`
	Error string  `json:"error"`
	Code  int32   `json:"code"`
}

// run sends one statement and reads its answer. A ClickHouse error comes
// back as a *clickhouse.Exception with the server's code, as from a server.
func (c *Conn) run(sql string) (*result, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	line, err := json.Marshal(map[string]string{"sql": sql})
	if err != nil {
		return nil, err
	}
	if _, err := c.in.Write(append(line, '\n')); err != nil {
		return nil, fmt.Errorf("chdb driver: %w", err)
	}
	reply, err := c.out.ReadBytes('\n')
	if err != nil {
		return nil, fmt.Errorf("chdb driver ended: %w", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(reply)))
	dec.UseNumber() // UInt64 values (buckets) keep every digit
	var r result
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("chdb driver: %w", err)
	}
	if r.Error != "" {
		if r.Code < 0 {
			return nil, errors.New(r.Error)
		}
		return nil, &clickhouse.Exception{Code: r.Code, Message: r.Error}
	}
	return &r, nil
}

// Version is the engine's version, as SELECT version() reports it.
func (c *Conn) Version() (string, error) {
	r, err := c.run("SELECT version()")
	if err != nil {
		return "", err
	}
	return fmt.Sprint(r.Data[0][0]), nil
}

// Query runs query with its positional arguments bound into the text.
func (c *Conn) Query(ctx context.Context, query string, args ...any) (driver.Rows, error) {
	sql, err := Bind(query, args...)
	if err != nil {
		return nil, err
	}
	r, err := c.run(sql)
	if err != nil {
		return nil, err
	}
	return &rows{r: r, i: -1}, nil
}

// QueryRow runs query and returns its first row.
func (c *Conn) QueryRow(ctx context.Context, query string, args ...any) driver.Row {
	rs, err := c.Query(ctx, query, args...)
	if err != nil {
		return &row{err: err}
	}
	return &row{rows: rs.(*rows)}
}

// Exec runs a statement and discards its result.
func (c *Conn) Exec(ctx context.Context, query string, args ...any) error {
	sql, err := Bind(query, args...)
	if err != nil {
		return err
	}
	_, err = c.run(sql)
	return err
}

// PrepareBatch collects rows for an "INSERT INTO t (columns)" statement;
// Send inserts them with one INSERT … VALUES.
func (c *Conn) PrepareBatch(ctx context.Context, query string, opts ...driver.PrepareBatchOption) (driver.Batch, error) {
	if !strings.HasPrefix(strings.ToUpper(strings.TrimSpace(query)), "INSERT INTO") {
		return nil, fmt.Errorf("chdbtest: a batch needs an INSERT INTO statement, got %q", query)
	}
	return &batch{c: c, query: query}, nil
}

// Ping checks that the session answers.
func (c *Conn) Ping(context.Context) error {
	_, err := c.run("SELECT 1")
	return err
}

// Stats reports no pool: there is one session.
func (c *Conn) Stats() driver.Stats { return driver.Stats{Open: 1} }

// Close ends the session and its process.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil {
		return nil
	}
	c.in.Close()
	err := c.cmd.Wait()
	c.cmd = nil
	return err
}

// rows walks a result. Scan converts each JSON value into its
// destination's Go type (see assign).
type rows struct {
	r   *result
	i   int
	err error
}

func (r *rows) Next() bool {
	if r.i+1 >= len(r.r.Data) {
		return false
	}
	r.i++
	return true
}

func (r *rows) Scan(dest ...any) error {
	if r.i < 0 || r.i >= len(r.r.Data) {
		return errors.New("chdbtest: Scan without a row")
	}
	vals := r.r.Data[r.i]
	if len(dest) != len(vals) {
		return fmt.Errorf("chdbtest: Scan of %d values into %d destinations", len(vals), len(dest))
	}
	for k := range dest {
		if err := assign(dest[k], vals[k], r.r.Meta[k].Type); err != nil {
			return fmt.Errorf("chdbtest: column %s: %w", r.r.Meta[k].Name, err)
		}
	}
	return nil
}

func (r *rows) ScanStruct(any) error { return errors.New("chdbtest: ScanStruct is not supported") }
func (r *rows) Totals(...any) error  { return errors.New("chdbtest: Totals is not supported") }
func (r *rows) Close() error         { return nil }
func (r *rows) Err() error           { return r.err }
func (r *rows) HasData() bool        { return len(r.r.Data) > 0 }
func (r *rows) ColumnTypes() []driver.ColumnType {
	out := make([]driver.ColumnType, len(r.r.Meta))
	for i, m := range r.r.Meta {
		out[i] = columnType{name: m.Name, typ: m.Type}
	}
	return out
}

func (r *rows) Columns() []string {
	out := make([]string, len(r.r.Meta))
	for i, m := range r.r.Meta {
		out[i] = m.Name
	}
	return out
}

type row struct {
	rows *rows
	err  error
}

func (r *row) Err() error { return r.err }

func (r *row) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}
	if !r.rows.Next() {
		return errNoRows
	}
	return r.rows.Scan(dest...)
}

func (r *row) ScanStruct(any) error { return errors.New("chdbtest: ScanStruct is not supported") }

var errNoRows = errors.New("sql: no rows in result set")

type batch struct {
	driver.Batch // nil: only the methods below are implemented
	c            *Conn
	query        string
	rows         []string
	sent         bool
}

func (b *batch) Append(v ...any) error {
	row, err := list("(", ")", v)
	if err != nil {
		return err
	}
	b.rows = append(b.rows, row)
	return nil
}

func (b *batch) Send() error {
	if b.sent {
		return errors.New("chdbtest: batch already sent")
	}
	b.sent = true
	if len(b.rows) == 0 {
		return nil
	}
	_, err := b.c.run(b.query + " VALUES " + strings.Join(b.rows, ", "))
	return err
}

func (b *batch) Abort() error { b.sent = true; return nil }
func (b *batch) Close() error { b.sent = true; return nil }
func (b *batch) Flush() error { return nil }
func (b *batch) IsSent() bool { return b.sent }
func (b *batch) Rows() int    { return len(b.rows) }
