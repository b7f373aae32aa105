package quality

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/llmcanary/llmcanary/internal/wire"
)

// DefaultJudgeModel is the model a Judge asks for when JudgeOptions.Model
// is empty; the simulated pool serves it in judge mode.
const DefaultJudgeModel = "llmcanary-judge"

// JudgeOptions configures a Judge. Zero values take the documented
// defaults.
type JudgeOptions struct {
	// Conn reads the captures and requests tables. Required.
	Conn driver.Conn
	// Database holds them; default the ScoreStore's database.
	Database string
	// Store receives the scores (a ScoreStore). Required.
	Store *ScoreStore
	// Endpoint is the OpenAI-compatible base URL of the judge model, e.g.
	// http://127.0.0.1:8100. Required.
	Endpoint string
	// Model is the judge's model name; default DefaultJudgeModel.
	Model string
	// APIKey, when set, is sent as a bearer token.
	APIKey string
	// Interval is the pause between rounds when there is no backlog;
	// default 30 s.
	Interval time.Duration
	// BatchSize is the most captures one round grades; default 32.
	BatchSize int
	// Concurrency is the most judge calls in flight; default 4.
	Concurrency int
	// Lookback is how old a capture may be and still be graded; it bounds
	// the partitions a round reads. Default 24 h.
	Lookback time.Duration
	// Priority, when set, names the versions whose answers are graded
	// first: the canaries of running rollouts. A canary's bad answers are
	// the evidence that rolls it back, and the rollout waits for them;
	// stable's answers are graded with what the budget leaves.
	Priority func() []string
	// HTTP calls the judge; default a client with a 60 s timeout.
	HTTP *http.Client
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

func (o *JudgeOptions) setDefaults() {
	if o.Database == "" && o.Store != nil {
		o.Database = o.Store.db
	}
	if o.Model == "" {
		o.Model = DefaultJudgeModel
	}
	if o.Interval == 0 {
		o.Interval = 30 * time.Second
	}
	if o.BatchSize == 0 {
		o.BatchSize = 32
	}
	if o.Concurrency == 0 {
		o.Concurrency = 4
	}
	if o.Lookback == 0 {
		o.Lookback = 24 * time.Hour
	}
	if o.HTTP == nil {
		o.HTTP = &http.Client{Timeout: 60 * time.Second}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Validate reports every invalid option at once.
func (o JudgeOptions) Validate() error {
	var errs []error
	if o.Conn == nil {
		errs = append(errs, errors.New("judge: Conn is required"))
	}
	if o.Store == nil {
		errs = append(errs, errors.New("judge: Store is required"))
	}
	if u, err := url.Parse(o.Endpoint); o.Endpoint == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("judge: Endpoint %q is not an http(s) base URL", o.Endpoint))
	}
	if o.Database != "" && !identRe.MatchString(o.Database) {
		errs = append(errs, fmt.Errorf("judge: Database %q is not a plain identifier", o.Database))
	}
	if o.Interval < 0 || o.BatchSize < 0 || o.Concurrency < 0 || o.Lookback < 0 {
		errs = append(errs, errors.New("judge: intervals and sizes must not be negative"))
	}
	return errors.Join(errs...)
}

// maxGivenUp bounds the request ids a Judge remembers as ungradable.
const maxGivenUp = 1000

// Judge grades captured responses with an LLM and stores the scores with
// source SourceJudge. A capture is graded once: a round takes only
// captures without a judge score. Run it in one goroutine per database;
// two judges on one database may grade a capture twice, which the
// analyzer's query counts once.
type Judge struct {
	o       JudgeOptions
	log     *slog.Logger
	chatURL string

	// givenUp holds captures whose reply could not be parsed or that the
	// judge refused as invalid; they are not sent again by this process.
	mu      sync.Mutex
	givenUp map[string]bool
}

// NewJudge checks o and returns a Judge.
func NewJudge(o JudgeOptions) (*Judge, error) {
	o.setDefaults()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	return &Judge{
		o: o, log: o.Logger,
		chatURL: strings.TrimRight(o.Endpoint, "/") + "/v1/chat/completions",
		givenUp: map[string]bool{},
	}, nil
}

// Run grades a batch at once and then every Interval, with no pause while
// full batches show a backlog, until ctx ends; it then returns nil. A
// failing round (judge or ClickHouse down) is logged when the failure
// starts and when it ends, not on every round, and its captures are
// graded by a later round.
func (j *Judge) Run(ctx context.Context) error { return j.loop(ctx, "quality judge", j.RunOnce) }

// loop runs once rounds as Run describes; name prefixes its logs.
func (j *Judge) loop(ctx context.Context, name string, once func(context.Context) (int, error)) error {
	failing := false
	for {
		n, err := once(ctx)
		if ctx.Err() != nil {
			return nil
		}
		switch {
		case err != nil && !failing:
			j.log.Warn(name+": round failed, retrying every interval", "interval", j.o.Interval, "err", err)
			failing = true
		case err == nil && failing:
			j.log.Info(name+": rounds succeed again", "judged", n)
			failing = false
		}
		wait := j.o.Interval
		if err == nil && n >= j.o.BatchSize {
			wait = 0
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// capture is one captured response to grade.
type capture struct {
	requestID, model, version string
	prompt, completion        string
	ts                        time.Time // seconds, from the captures table
}

// errJudgeUnavailable marks a failure of the judge endpoint rather than of
// one capture: the round stops and the rest waits for the next one.
var errJudgeUnavailable = errors.New("judge unavailable")

// errUngradable marks a capture the judge cannot grade: an unparsable
// reply or a 4xx the request itself caused.
var errUngradable = errors.New("ungradable")

// RunOnce grades one batch of captures that have no judge score yet and
// stores the scores it got. It returns how many it stored. When the judge
// endpoint fails, it stores the scores it already has and returns an error
// wrapping the failure; the remaining captures stay ungraded.
func (j *Judge) RunOnce(ctx context.Context) (int, error) {
	caps, err := j.pending(ctx)
	if err != nil {
		return 0, err
	}
	if len(caps) == 0 {
		return 0, nil
	}
	meta, err := j.requestInfo(ctx, caps)
	if err != nil {
		return 0, err
	}
	// pending saw each request's row; one missing now is left for a later
	// round rather than scored without its exact time.
	caps = slices.DeleteFunc(caps, func(c capture) bool { _, ok := meta[c.requestID]; return !ok })

	scores, firstErr := gradeAll(ctx, j, "quality judge", caps, func(c capture) string { return c.requestID },
		func(ctx context.Context, c capture) ([]Score, error) {
			v, err := j.grade(ctx, c)
			row := meta[c.requestID]
			row.Score, row.Source = v, SourceJudge
			return []Score{row}, err
		})
	if err := j.o.Store.Write(ctx, scores); err != nil {
		return 0, fmt.Errorf("judge: %w", err)
	}
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	if firstErr != nil {
		return len(scores), fmt.Errorf("judge: %w", firstErr)
	}
	return len(scores), nil
}

// gradeAll grades items on the judge's Concurrency workers and returns
// the scores of those graded. An item the judge cannot grade is logged
// and not sent again by this process; the first other failure stops the
// rest and is returned with the scores already had.
func gradeAll[T any](ctx context.Context, j *Judge, name string, items []T, id func(T) string, grade func(context.Context, T) ([]Score, error)) ([]Score, error) {
	gctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		scores   []Score
		firstErr error
		wg       sync.WaitGroup
		work     = make(chan T)
	)
	for range min(j.o.Concurrency, len(items)) {
		wg.Go(func() {
			for it := range work {
				sc, err := grade(gctx, it)
				mu.Lock()
				switch {
				case err == nil:
					scores = append(scores, sc...)
				case errors.Is(err, errUngradable):
					j.log.Warn(name+": skipping what it cannot grade", "request_id", id(it), "err", err)
					j.giveUp(id(it))
				case firstErr == nil && gctx.Err() == nil:
					firstErr = err
					cancel()
				}
				mu.Unlock()
			}
		})
	}
feed:
	for _, it := range items {
		select {
		case work <- it:
		case <-gctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	return scores, firstErr
}

func (j *Judge) giveUp(id string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if len(j.givenUp) >= maxGivenUp {
		clear(j.givenUp)
	}
	j.givenUp[id] = true
}

// pending reads the captures of successful requests that have no judge
// score: the priority versions' first, then the newest first (the
// analyzer's windows are recent, so under a backlog the freshest captures
// matter most).
func (j *Judge) pending(ctx context.Context) ([]capture, error) {
	db := j.o.Database
	since := time.Now().Add(-j.o.Lookback)
	args := []any{SourceJudge}
	skip := ""
	j.mu.Lock()
	if len(j.givenUp) > 0 {
		ids := make([]any, 0, len(j.givenUp))
		for id := range j.givenUp {
			ids = append(ids, id)
		}
		skip = "\n  AND request_id NOT IN ?"
		args = append(args, clickhouse.GroupSet{Value: ids})
	}
	j.mu.Unlock()
	var priority []string
	if j.o.Priority != nil {
		priority = j.o.Priority()
	}
	if len(priority) == 0 {
		priority = []string{""} // an empty array has no type on ClickHouse 18.16; no version is named ""
	}
	args = append(args, priority, j.o.BatchSize)
	// A capture is graded only when its request succeeded: a failed one
	// is counted as a failure, and its partial text says nothing about
	// the version's answers. GLOBAL runs the subqueries once, here: when
	// the telemetry is a Distributed table over a cluster, the scores
	// live on this server only and the requests table is distributed too.
	q := fmt.Sprintf(`SELECT request_id, model, version, ts, prompt, completion
FROM %[1]s.%[2]s
WHERE date >= %[3]s AND ts >= toDateTime(%[4]d)
  AND request_id GLOBAL NOT IN (SELECT request_id FROM %[1]s.%[5]s WHERE date >= %[3]s AND source = ?)
  AND request_id GLOBAL IN (SELECT request_id FROM %[1]s.%[6]s WHERE date >= %[3]s AND ts >= toDateTime(%[4]d) AND failure = '')%[7]s
ORDER BY has(?, version) DESC, ts DESC
LIMIT ?`, db, wire.TableCaptures, dateLit(since), since.Unix(), Table, wire.TableRequests, skip)
	rows, err := j.o.Conn.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("judge: read captures: %w", err)
	}
	defer rows.Close()
	var out []capture
	for rows.Next() {
		var c capture
		if err := rows.Scan(&c.requestID, &c.model, &c.version, &c.ts, &c.prompt, &c.completion); err != nil {
			return nil, fmt.Errorf("judge: read captures: %w", err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("judge: read captures: %w", err)
	}
	return out, nil
}

// requestInfo returns, per request id of caps that has a requests row,
// the score row to fill: the request's exact time, model, version and
// forced flag, which the analyzer's window filter reads from the quality
// row. The lookup reads only the days and seconds the captures cover (a
// capture has its request's time). The upper ts bound is exclusive at the
// next whole second, right for a DateTime and a DateTime64(3) ts alike.
func (j *Judge) requestInfo(ctx context.Context, caps []capture) (map[string]Score, error) {
	lo, hi := caps[0].ts, caps[0].ts
	ids := make([]any, len(caps))
	for i, c := range caps {
		lo, hi = minTime(lo, c.ts), maxTime(hi, c.ts)
		ids[i] = c.requestID
	}
	q := fmt.Sprintf(`SELECT request_id, ts_ms, model, version, forced FROM %s.%s
WHERE date >= %s AND date <= %s AND ts >= toDateTime(%d) AND ts < toDateTime(%d) AND request_id IN ?`,
		j.o.Database, wire.TableRequests, dateLit(lo), dateLit(hi), lo.Unix(), hi.Unix()+1)
	rows, err := j.o.Conn.Query(ctx, q, clickhouse.GroupSet{Value: ids})
	if err != nil {
		return nil, fmt.Errorf("judge: look up requests: %w", err)
	}
	defer rows.Close()
	out := make(map[string]Score, len(caps))
	for rows.Next() {
		var (
			s      Score
			tsMs   uint64
			forced uint8
		)
		if err := rows.Scan(&s.RequestID, &tsMs, &s.Model, &s.Version, &forced); err != nil {
			return nil, fmt.Errorf("judge: look up requests: %w", err)
		}
		s.Time, s.Forced = time.UnixMilli(int64(tsMs)).UTC(), forced == 1
		out[s.RequestID] = s
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("judge: look up requests: %w", err)
	}
	return out, nil
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// JudgeSystemPrompt is the instruction the judge model receives.
const JudgeSystemPrompt = `You grade answers an AI assistant gave to a user's prompt. ` +
	`Judge whether the answer is correct, relevant and helpful. ` +
	`Reply with JSON {"score": x} and nothing else, where x is a number in [0,1]: ` +
	`1 for a fully correct and helpful answer, 0 for a wrong, harmful or useless one.`

// judgePrompt is the user message: the captured prompt and answer, fenced
// so the judge can tell them apart.
func judgePrompt(c capture) string {
	return "Prompt:\n<<<\n" + c.prompt + "\n>>>\n\nAnswer:\n<<<\n" + c.completion + "\n>>>"
}

type chatRequest struct {
	Model       string        `json:"model"`
	Messages    []chatMessage `json:"messages"`
	Temperature float64       `json:"temperature"`
	MaxTokens   int           `json:"max_tokens"`
	Stream      bool          `json:"stream"`
}

type chatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type chatResponse struct {
	Choices []struct {
		Message chatMessage `json:"message"`
	} `json:"choices"`
}

// grade asks the judge about c and returns its score. Errors wrap
// errUngradable when c itself is the problem, else errJudgeUnavailable.
func (j *Judge) grade(ctx context.Context, c capture) (float64, error) {
	body, err := json.Marshal(chatRequest{
		Model: j.o.Model,
		Messages: []chatMessage{
			{Role: "system", Content: JudgeSystemPrompt},
			{Role: "user", Content: judgePrompt(c)},
		},
		MaxTokens: 64,
	})
	if err != nil {
		return 0, fmt.Errorf("%w: %w", errUngradable, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, j.chatURL, bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("%w: %w", errJudgeUnavailable, err)
	}
	req.Header.Set("content-type", "application/json")
	if j.o.APIKey != "" {
		req.Header.Set("authorization", "Bearer "+j.o.APIKey)
	}
	resp, err := j.o.HTTP.Do(req)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", errJudgeUnavailable, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, fmt.Errorf("%w: read reply: %w", errJudgeUnavailable, err)
	}
	switch {
	case resp.StatusCode == http.StatusOK:
	case resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusRequestEntityTooLarge ||
		resp.StatusCode == http.StatusUnprocessableEntity:
		// The request was refused for what it carries (too long, say):
		// this capture will never be graded, the others may.
		return 0, fmt.Errorf("%w: judge answered %d: %s", errUngradable, resp.StatusCode, snippet(b))
	default:
		return 0, fmt.Errorf("%w: judge answered %d: %s", errJudgeUnavailable, resp.StatusCode, snippet(b))
	}
	var cr chatResponse
	if err := json.Unmarshal(b, &cr); err != nil || len(cr.Choices) == 0 {
		return 0, fmt.Errorf("%w: reply is not a chat completion: %s", errUngradable, snippet(b))
	}
	v, err := ParseScore(cr.Choices[0].Message.Content)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", errUngradable, err)
	}
	return v, nil
}

func snippet(b []byte) string { return truncate(strings.TrimSpace(string(b)), 200) }
