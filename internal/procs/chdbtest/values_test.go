package chdbtest

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
)

func TestBindQuotesArgumentsAndLeavesQuotedQuestionMarks(t *testing.T) {
	got, err := Bind("SELECT '?', x FROM t WHERE a = ? AND b IN ? AND c = ? AND d = ?",
		"it's", clickhouse.GroupSet{Value: []any{"a", uint64(18446744073709551615)}}, 0.5, []string{"v1"})
	if err != nil {
		t.Fatal(err)
	}
	want := `SELECT '?', x FROM t WHERE a = 'it\'s' AND b IN ('a', 18446744073709551615) AND c = 0.5 AND d = ['v1']`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if _, err := Bind("SELECT ?, ?", 1); err == nil {
		t.Error("bound two placeholders with one argument")
	}
	if _, err := Bind("SELECT ?", struct{}{}); err == nil {
		t.Error("bound a value with no ClickHouse literal")
	}
}

func TestCanonicalValuesOfBothServersCompare(t *testing.T) {
	sec := time.Date(2026, 11, 30, 19, 0, 5, 0, time.UTC)
	cases := []struct {
		old    any
		oldTyp string
		modern any
		modTyp string
	}{
		{sec, "DateTime", "2026-11-30 19:00:05.500", "DateTime64(3)"}, // 18.16 has seconds only
		{time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC), "Date", "2026-11-30", "Date"},
		{uint64(18446744073709551615), "UInt64", json.Number("18446744073709551615"), "UInt64"},
		{2.0, "Float64", json.Number("2"), "Float64"},
		{0.1 + 0.2, "Float64", json.Number("0.3"), "Float64"},
		{[]float64{1.5, 2}, "Array(Float64)", []any{json.Number("1.5"), json.Number("2")}, "Array(Float64)"},
		{"v1", "String", "v1", "LowCardinality(String)"},
	}
	for _, c := range cases {
		if a, b := canonical(c.old, c.oldTyp), canonical(c.modern, c.modTyp); a != b {
			t.Errorf("%v (%s) → %q but %v (%s) → %q", c.old, c.oldTyp, a, c.modern, c.modTyp, b)
		}
	}
	if a, b := canonical(0.3, "Float64"), canonical(json.Number("0.30001"), "Float64"); a == b {
		t.Errorf("0.3 and 0.30001 both canonical %q", a)
	}
}

func TestDiffFindsMissingExtraAndRenamedButNotReordered(t *testing.T) {
	want := Result{Columns: []string{"v", "n"}, Rows: [][]string{{"a", "1"}, {"b", "2"}}}
	if d := Diff(want, Result{Columns: []string{"v", "n"}, Rows: [][]string{{"b", "2"}, {"a", "1"}}}); d != "" {
		t.Errorf("reordered rows differ: %s", d)
	}
	d := Diff(want, Result{Columns: []string{"v", "n"}, Rows: [][]string{{"a", "1"}, {"b", "3"}}})
	if !strings.Contains(d, "missing b | 2") || !strings.Contains(d, "extra   b | 3") {
		t.Errorf("changed value: %q", d)
	}
	if d := Diff(want, Result{Columns: []string{"v", "count"}, Rows: want.Rows}); !strings.Contains(d, "columns") {
		t.Errorf("renamed column: %q", d)
	}
}
