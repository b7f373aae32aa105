package quality

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/llmcanary/llmcanary/internal/wire"
)

// ShadowTable holds the judge's scores of shadow pairs: for each mirrored
// request, the score of stable's answer (the user's) and of the shadow
// version's, two rows with the request id, each with the version that
// answered. It is apart from Table on purpose: Table's scores are of
// user traffic, and a shadow answer is none.
const ShadowTable = "shadow_scores"

// SourceShadowJudge marks the scores of ShadowTable.
const SourceShadowJudge = "shadow_judge"

// ShadowJudge grades both answers of each shadow pair with the same judge
// as Judge (its model, endpoint and limits): the user's answer from
// stable, captured by the telemetry, and the mirrored copy's answer from
// the shadow version (wire.TableShadow), given the same prompt. The two
// scores of a pair are what the analyzer compares (stable's minus the
// canary's). A shadow answer that failed scores 0 without a judge call.
// Pairs are only formed with a successful, unforced stable answer that
// was captured. Run it in one goroutine per database.
type ShadowJudge struct {
	j *Judge
}

// NewShadowJudge returns a ShadowJudge that grades with j's options and
// creates ShadowTable if it is missing.
func NewShadowJudge(ctx context.Context, j *Judge) (*ShadowJudge, error) {
	if j == nil {
		return nil, errors.New("shadow judge: a judge is required")
	}
	if err := j.o.Conn.Exec(ctx, createSQL(j.o.Database, ShadowTable)); err != nil {
		return nil, fmt.Errorf("shadow judge: create table %s.%s: %w", j.o.Database, ShadowTable, err)
	}
	return &ShadowJudge{j: j}, nil
}

// Run grades pairs every Interval of the judge (at once while batches are
// full) until ctx ends, then returns nil; failures are logged when they
// start and when they end.
func (s *ShadowJudge) Run(ctx context.Context) error {
	return s.j.loop(ctx, "shadow judge", s.RunOnce)
}

// shadowPair is one mirrored request and the two answers to its prompt.
type shadowPair struct {
	requestID, model, stable, canary string
	tsMs                             uint64
	prompt, stableText, canaryText   string
	canaryFailed                     bool
}

// RunOnce grades one batch of pairs without scores and stores both
// scores of each pair it graded. It returns how many pairs it stored.
func (s *ShadowJudge) RunOnce(ctx context.Context) (int, error) {
	pairs, err := s.pending(ctx)
	if err != nil || len(pairs) == 0 {
		return 0, err
	}
	scores, firstErr := gradeAll(ctx, s.j, "shadow judge", pairs, func(p shadowPair) string { return p.requestID }, s.grade)
	if err := writeScores(ctx, s.j.o.Conn, insertSQL(s.j.o.Database, ShadowTable), scores); err != nil {
		return 0, fmt.Errorf("shadow judge: %w", err)
	}
	if firstErr != nil {
		return len(scores) / 2, fmt.Errorf("shadow judge: %w", firstErr)
	}
	return len(scores) / 2, nil
}

// grade scores both answers of p.
func (s *ShadowJudge) grade(ctx context.Context, p shadowPair) ([]Score, error) {
	st, err := s.j.grade(ctx, capture{requestID: p.requestID, prompt: p.prompt, completion: p.stableText})
	if err != nil {
		return nil, err
	}
	var cs float64
	if !p.canaryFailed {
		if cs, err = s.j.grade(ctx, capture{requestID: p.requestID, prompt: p.prompt, completion: p.canaryText}); err != nil {
			return nil, err
		}
	}
	at := time.UnixMilli(int64(p.tsMs)).UTC()
	row := func(version string, v float64) Score {
		return Score{Time: at, RequestID: p.requestID, Model: p.model, Version: version, Score: v, Source: SourceShadowJudge}
	}
	return []Score{row(p.stable, st), row(p.canary, cs)}, nil
}

// pending reads a batch of shadow answers that have no scores yet, each
// with the captured answer of the user's request if that request was
// served by another version, succeeded and was not forced; the newest
// first.
func (s *ShadowJudge) pending(ctx context.Context) ([]shadowPair, error) {
	db := s.j.o.Database
	since := time.Now().Add(-s.j.o.Lookback)
	skip := []string{""} // an empty array has no type on ClickHouse 18.16
	s.j.mu.Lock()
	for id := range s.j.givenUp {
		skip = append(skip, id)
	}
	s.j.mu.Unlock()
	slices.Sort(skip)
	win := fmt.Sprintf("date >= %s AND ts >= toDateTime(%d)", dateLit(since), since.Unix())
	q := fmt.Sprintf(`SELECT request_id, model, version, ts_ms, prompt, completion, failure != '', stable_version, stable_completion
FROM %[1]s.%[2]s
GLOBAL ANY INNER JOIN (
    SELECT request_id, version AS stable_version, completion AS stable_completion
    FROM %[1]s.%[3]s
    WHERE %[5]s
) AS stable USING request_id
WHERE %[5]s
  AND version != stable_version
  AND request_id GLOBAL IN (SELECT request_id FROM %[1]s.%[4]s WHERE %[5]s AND failure = '' AND forced = 0)
  AND request_id GLOBAL NOT IN (SELECT request_id FROM %[1]s.%[6]s WHERE %[5]s)
  AND NOT has(?, request_id)
ORDER BY ts_ms DESC
LIMIT ?`, db, wire.TableShadow, wire.TableCaptures, wire.TableRequests, win, ShadowTable)
	rows, err := s.j.o.Conn.Query(ctx, q, skip, s.j.o.BatchSize)
	if err != nil {
		return nil, fmt.Errorf("shadow judge: read pairs: %w", err)
	}
	defer rows.Close()
	var out []shadowPair
	for rows.Next() {
		var (
			p      shadowPair
			failed uint8
		)
		if err := rows.Scan(&p.requestID, &p.model, &p.canary, &p.tsMs, &p.prompt, &p.canaryText, &failed, &p.stable, &p.stableText); err != nil {
			return nil, fmt.Errorf("shadow judge: read pairs: %w", err)
		}
		p.canaryFailed = failed == 1
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("shadow judge: read pairs: %w", err)
	}
	return out, nil
}
