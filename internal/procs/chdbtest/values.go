package chdbtest

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/column"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Bind replaces each positional ? outside quotes with its argument as a
// ClickHouse literal, as clickhouse-go binds them over the native protocol.
func Bind(query string, args ...any) (string, error) {
	if len(args) == 0 {
		return query, nil
	}
	var b strings.Builder
	n := 0
	var quote byte // the open quote, 0 outside quotes
	for i := 0; i < len(query); i++ {
		ch := query[i]
		switch {
		case quote != 0:
			if ch == '\\' && i+1 < len(query) {
				b.WriteByte(ch)
				i++
				ch = query[i]
			} else if ch == quote {
				quote = 0
			}
		case ch == '\'' || ch == '"' || ch == '`':
			quote = ch
		case ch == '?':
			if n >= len(args) {
				return "", fmt.Errorf("chdbtest: more ? than the %d arguments in %q", len(args), query)
			}
			lit, err := literal(args[n])
			if err != nil {
				return "", err
			}
			n++
			b.WriteString(lit)
			continue
		}
		b.WriteByte(ch)
	}
	if n != len(args) {
		return "", fmt.Errorf("chdbtest: %d arguments for %d ? in %q", len(args), n, query)
	}
	return b.String(), nil
}

var quoter = strings.NewReplacer(`\`, `\\`, `'`, `\'`)

// literal renders v as a ClickHouse literal. Times are UTC with
// milliseconds, valid for Date, DateTime and DateTime64 columns alike.
func literal(v any) (string, error) {
	switch v := v.(type) {
	case string:
		return "'" + quoter.Replace(v) + "'", nil
	case bool:
		if v {
			return "1", nil
		}
		return "0", nil
	case int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
		return fmt.Sprint(v), nil
	case float32:
		return floatLit(float64(v)), nil
	case float64:
		return floatLit(v), nil
	case time.Time:
		return "toDateTime64('" + v.UTC().Format("2006-01-02 15:04:05.000") + "', 3, 'UTC')", nil
	case clickhouse.GroupSet:
		return list("(", ")", v.Value)
	case []any:
		return list("[", "]", v)
	case []string:
		return list("[", "]", toAny(v))
	case []float64:
		return list("[", "]", toAny(v))
	case []uint64:
		return list("[", "]", toAny(v))
	}
	return "", fmt.Errorf("chdbtest: no literal for %T", v)
}

func toAny[T any](s []T) []any {
	out := make([]any, len(s))
	for i, x := range s {
		out[i] = x
	}
	return out
}

func list(open, close string, vs []any) (string, error) {
	parts := make([]string, len(vs))
	for i, v := range vs {
		s, err := literal(v)
		if err != nil {
			return "", err
		}
		parts[i] = s
	}
	return open + strings.Join(parts, ", ") + close, nil
}

func floatLit(f float64) string {
	switch {
	case math.IsNaN(f):
		return "nan"
	case math.IsInf(f, 1):
		return "inf"
	case math.IsInf(f, -1):
		return "-inf"
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// assign stores the JSON value v of a column of ClickHouse type typ into
// dest, a pointer to one of the Go types the project scans into.
func assign(dest, v any, typ string) error {
	switch d := dest.(type) {
	case *any:
		*d = v
		return nil
	case *string:
		switch v := v.(type) {
		case string:
			*d = v
		case json.Number:
			*d = v.String()
		default:
			return fmt.Errorf("%v into string", v)
		}
		return nil
	case *time.Time:
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("%v into time.Time", v)
		}
		t, err := parseTime(s)
		if err != nil {
			return err
		}
		*d = t
		return nil
	case *float64:
		f, err := toFloat(v)
		*d = f
		return err
	case *float32:
		f, err := toFloat(v)
		*d = float32(f)
		return err
	case *[]float64:
		arr, ok := v.([]any)
		if !ok {
			return fmt.Errorf("%v into []float64", v)
		}
		out := make([]float64, len(arr))
		for i, x := range arr {
			f, err := toFloat(x)
			if err != nil {
				return err
			}
			out[i] = f
		}
		*d = out
		return nil
	case *bool:
		switch v := v.(type) {
		case bool:
			*d = v
		case json.Number:
			*d = v.String() != "0"
		default:
			return fmt.Errorf("%v into bool", v)
		}
		return nil
	}
	rv := reflect.ValueOf(dest)
	if rv.Kind() != reflect.Pointer {
		return fmt.Errorf("destination %T is not a pointer", dest)
	}
	e := rv.Elem()
	s := fmt.Sprint(v)
	switch e.Kind() {
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		u, err := strconv.ParseUint(s, 10, e.Type().Bits())
		if err != nil {
			return fmt.Errorf("%s (%s) into %T: %w", s, typ, dest, err)
		}
		e.SetUint(u)
		return nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(s, 10, e.Type().Bits())
		if err != nil {
			return fmt.Errorf("%s (%s) into %T: %w", s, typ, dest, err)
		}
		e.SetInt(n)
		return nil
	}
	return fmt.Errorf("no conversion of %s into %T", typ, dest)
}

func toFloat(v any) (float64, error) {
	switch v := v.(type) {
	case json.Number:
		return strconv.ParseFloat(v.String(), 64)
	case string: // nan, -nan, inf, -inf (output_format_json_quote_denormals)
		if v == "-nan" {
			v = "nan"
		}
		return strconv.ParseFloat(v, 64)
	}
	return 0, fmt.Errorf("%v into float64", v)
}

func parseTime(s string) (time.Time, error) {
	for _, layout := range []string{"2006-01-02 15:04:05.999999999", "2006-01-02 15:04:05", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a ClickHouse date or time", s)
}

// columnType describes a result column; its values scan into any.
type columnType struct{ name, typ string }

func (c columnType) Name() string             { return c.name }
func (c columnType) Nullable() bool           { return strings.HasPrefix(c.typ, "Nullable(") }
func (c columnType) ScanType() reflect.Type   { return reflect.TypeOf((*any)(nil)).Elem() }
func (c columnType) DatabaseTypeName() string { return c.typ }

func (b *batch) Columns() []column.Interface { return nil }

// Result is a query's answer with every value in a canonical text form,
// so that answers of different servers compare: integers in decimal,
// floats to 10 significant digits, times and dates as Unix seconds (the
// precision of 18.16's DateTime), arrays bracketed.
type Result struct {
	Columns []string
	Types   []string
	Rows    [][]string
}

// Values runs query on conn (a clickhouse-go connection or a Conn) and
// returns its answer in canonical form.
func Values(ctx context.Context, conn driver.Conn, query string, args ...any) (Result, error) {
	rs, err := conn.Query(ctx, query, args...)
	if err != nil {
		return Result{}, err
	}
	defer rs.Close()
	var res Result
	cts := rs.ColumnTypes()
	for _, ct := range cts {
		res.Columns = append(res.Columns, ct.Name())
		res.Types = append(res.Types, ct.DatabaseTypeName())
	}
	for rs.Next() {
		dest := make([]any, len(cts))
		for i, ct := range cts {
			dest[i] = newOf(ct)
		}
		if err := rs.Scan(dest...); err != nil {
			return res, err
		}
		row := make([]string, len(dest))
		for i, d := range dest {
			row[i] = canonical(deref(d), res.Types[i])
		}
		res.Rows = append(res.Rows, row)
	}
	return res, rs.Err()
}

func canonical(v any, typ string) string {
	switch v := v.(type) {
	case nil:
		return "NULL"
	case *any:
		return canonical(*v, typ)
	case string:
		if strings.Contains(typ, "Date") {
			if t, err := parseTime(v); err == nil {
				return strconv.FormatInt(t.Unix(), 10)
			}
		}
		if strings.Contains(typ, "Float") {
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				return canonFloat(f)
			}
		}
		return v
	case json.Number:
		if strings.Contains(typ, "Float") || strings.Contains(typ, "Decimal") {
			f, _ := strconv.ParseFloat(v.String(), 64)
			return canonFloat(f)
		}
		return v.String()
	case time.Time:
		return strconv.FormatInt(v.Unix(), 10)
	case float64:
		return canonFloat(v)
	case float32:
		return canonFloat(float64(v))
	case bool:
		if v {
			return "1"
		}
		return "0"
	case []any:
		parts := make([]string, len(v))
		for i, x := range v {
			parts[i] = canonical(x, elemType(typ))
		}
		return "[" + strings.Join(parts, ",") + "]"
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Slice {
		parts := make([]string, rv.Len())
		for i := range parts {
			parts[i] = canonical(rv.Index(i).Interface(), elemType(typ))
		}
		return "[" + strings.Join(parts, ",") + "]"
	}
	return fmt.Sprint(v)
}

// elemType is the element type of an Array type.
func elemType(typ string) string {
	if strings.HasPrefix(typ, "Array(") {
		return strings.TrimSuffix(strings.TrimPrefix(typ, "Array("), ")")
	}
	return typ
}

// canonFloat rounds to 10 significant digits: the engines' float
// aggregates may differ in the last bits (summation order).
func canonFloat(f float64) string {
	if f == math.Trunc(f) && math.Abs(f) < 1e15 {
		return strconv.FormatFloat(f, 'f', 0, 64)
	}
	return strconv.FormatFloat(f, 'g', 10, 64)
}

func newOf(ct driver.ColumnType) any { return reflect.New(ct.ScanType()).Interface() }

func deref(p any) any { return reflect.ValueOf(p).Elem().Interface() }

func msTime(ms uint64) time.Time { return time.UnixMilli(int64(ms)).UTC() }
