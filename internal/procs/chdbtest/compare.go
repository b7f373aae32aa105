package chdbtest

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Diff describes how got differs from want, "" when they hold the same
// rows (in any order: rows that tie on a query's ORDER BY may come in
// either order) with the same column names.
func Diff(want, got Result) string {
	if !slices.Equal(want.Columns, got.Columns) {
		return fmt.Sprintf("columns %v, want %v", got.Columns, want.Columns)
	}
	w, g := sortedRows(want.Rows), sortedRows(got.Rows)
	var out []string
	i, j := 0, 0
	for i < len(w) || j < len(g) {
		switch {
		case j >= len(g) || (i < len(w) && w[i] < g[j]):
			out = append(out, "missing "+w[i])
			i++
		case i >= len(w) || g[j] < w[i]:
			out = append(out, "extra   "+g[j])
			j++
		default:
			i++
			j++
		}
	}
	if len(out) == 0 {
		return ""
	}
	if len(out) > 10 {
		out = append(out[:10], fmt.Sprintf("… %d more", len(out)-10))
	}
	return fmt.Sprintf("%d rows, want %d:\n%s", len(got.Rows), len(want.Rows), strings.Join(out, "\n"))
}

func sortedRows(rows [][]string) []string {
	out := make([]string, len(rows))
	for i, r := range rows {
		out[i] = strings.Join(r, " | ")
	}
	slices.Sort(out)
	return out
}

// Compare runs query on old (18.16) and on modern and reports whether they
// answer alike: an error names the server that failed or the difference.
// It returns how many rows old answered, so that a caller can refuse a
// comparison of nothing.
func Compare(ctx context.Context, old, modern driver.Conn, query string) (int, error) {
	want, err := Values(ctx, old, query)
	if err != nil {
		return 0, fmt.Errorf("18.16: %w\n%s", err, query)
	}
	got, err := Values(ctx, modern, query)
	if err != nil {
		return len(want.Rows), fmt.Errorf("modern: %w\n%s", err, query)
	}
	if d := Diff(want, got); d != "" {
		return len(want.Rows), fmt.Errorf("the modern server answers differently: %s\n%s", d, query)
	}
	return len(want.Rows), nil
}

// Copy inserts every row of table db.table on from into the table of the
// same name on to, column by column by name. A DateTime64 ts on to takes
// its milliseconds from the row's ts_ms, as the telemetry writer stores
// them, so a copied row is the row the writer would have written there.
// It returns how many rows it copied.
func Copy(ctx context.Context, from, to driver.Conn, db, table string) (int, error) {
	rs, err := from.Query(ctx, fmt.Sprintf("SELECT * FROM %s.%s", db, table))
	if err != nil {
		return 0, err
	}
	defer rs.Close()
	cols := rs.Columns()
	tsMs := slices.Index(cols, "ts_ms")
	b, err := to.PrepareBatch(ctx, fmt.Sprintf("INSERT INTO %s.%s (%s)", db, table, strings.Join(cols, ", ")))
	if err != nil {
		return 0, err
	}
	n := 0
	for rs.Next() {
		dest := make([]any, len(cols))
		for i, ct := range rs.ColumnTypes() {
			dest[i] = newOf(ct)
		}
		if err := rs.Scan(dest...); err != nil {
			return n, err
		}
		vals := make([]any, len(dest))
		for i := range dest {
			vals[i] = deref(dest[i])
		}
		if ts := slices.Index(cols, "ts"); ts >= 0 && tsMs >= 0 {
			vals[ts] = msTime(vals[tsMs].(uint64))
		}
		if err := b.Append(vals...); err != nil {
			return n, err
		}
		n++
	}
	if err := rs.Err(); err != nil {
		return n, err
	}
	return n, b.Send()
}
