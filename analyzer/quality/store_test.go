//go:build integration

package quality

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/internal/procs/chtest"
)

func TestOpenScoreStoreCreatesTheDocumentedTableOnce(t *testing.T) {
	ch := chtest.Shared(t)
	conn := chtest.Connect(t, ch)
	db := chtest.NewDatabase()
	for i := range 2 {
		if _, err := OpenScoreStore(context.Background(), conn, db); err != nil {
			t.Fatalf("open %d: %v", i+1, err)
		}
	}
	rows, err := conn.Query(context.Background(),
		"SELECT name, type FROM system.columns WHERE database = ? AND table = ?", db, Table)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []string
	for rows.Next() {
		var name, typ string
		if err := rows.Scan(&name, &typ); err != nil {
			t.Fatal(err)
		}
		got = append(got, name+" "+typ)
	}
	want := []string{"ts DateTime", "ts_ms UInt64", "date Date", "request_id String", "model String", "version String",
		"score Float64", "source String", "forced UInt8", "comment String"}
	if !slices.Equal(got, want) {
		t.Errorf("columns %v, want %v", got, want)
	}
	var create string
	if err := conn.QueryRow(context.Background(), fmt.Sprintf("SHOW CREATE TABLE %s.%s", db, Table)).Scan(&create); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(create, "PARTITION BY date") || !strings.Contains(create, "ORDER BY (model, version, ts, request_id)") {
		t.Errorf("table is %s, want it partitioned by date and ordered like requests", create)
	}
}

func TestOpenScoreStoreRejectsDatabaseNamesThatAreNotIdentifiers(t *testing.T) {
	for _, db := range []string{"a b", "x;DROP TABLE y", "1db", "db.t"} {
		if _, err := OpenScoreStore(context.Background(), chtest.Connect(t, chtest.Shared(t)), db); err == nil {
			t.Errorf("OpenScoreStore(%q) succeeded", db)
		}
	}
}

func TestWriteRejectsInvalidScoresAndWritesNone(t *testing.T) {
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	good := Score{Time: at, RequestID: "r", Model: "m", Version: "v", Score: 0.5, Source: SourceJudge}
	cases := []struct {
		name   string
		change func(*Score)
	}{
		{"score above one", func(s *Score) { s.Score = 1.01 }},
		{"negative score", func(s *Score) { s.Score = -0.01 }},
		{"unknown source", func(s *Score) { s.Source = "vibes" }},
		{"no request id", func(s *Score) { s.RequestID = "" }},
		{"no request time", func(s *Score) { s.Time = time.Time{} }},
	}
	ch := chtest.Shared(t)
	store, conn := openStore(t, ch, nil)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bad := good
			tc.change(&bad)
			if err := store.Write(context.Background(), []Score{good, bad}); err == nil {
				t.Fatal("Write accepted an invalid score")
			}
		})
	}
	if got := storedScores(t, conn, store.Database()); len(got) != 0 {
		t.Fatalf("stored %v after only invalid batches", got)
	}
	if err := store.Write(context.Background(), []Score{good}); err != nil {
		t.Fatal(err)
	}
	if got := storedScores(t, conn, store.Database()); len(got) != 1 || got[0] != good {
		t.Fatalf("stored %+v, want %+v", got, good)
	}
}
