package quality

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/llmcanary/llmcanary/internal/wire"
)

// Feedback is the body FeedbackHandler accepts: a request id and either a
// score in [0, 1] or a rating "up" (1) or "down" (0), with an optional
// comment.
type Feedback struct {
	RequestID string   `json:"request_id"`
	Score     *float64 `json:"score,omitempty"`
	Rating    string   `json:"rating,omitempty"`
	Comment   string   `json:"comment,omitempty"`
}

// Limits of a feedback request.
const (
	maxFeedbackBody    = 64 << 10
	MaxFeedbackComment = 4 << 10
)

// errRequestNotFound reports a request id with no row in the requests
// table.
var errRequestNotFound = errors.New("request not found")

// errAlreadyRated reports a second rating of one request.
var errAlreadyRated = errors.New("request already rated")

// FeedbackResponse is what FeedbackHandler answers when it stored a rating.
type FeedbackResponse struct {
	RequestID string  `json:"request_id"`
	Model     string  `json:"model"`
	Version   string  `json:"version"`
	Score     float64 `json:"score"`
	Source    string  `json:"source"`
}

// FeedbackHandler serves POST requests with a Feedback body. It looks up
// the request's model, version and forced flag in the requests table,
// waiting up to DefaultLookupWait for a row that is still on its way, and
// stores the rating with source SourceFeedback. Answers:
//
//   - 201 with a FeedbackResponse when stored;
//   - 400 for malformed JSON, unknown fields, a missing request id, both or
//     neither of score and rating, a score outside [0, 1], a rating other
//     than up or down, or a comment over MaxFeedbackComment bytes;
//   - 404 when the request id is unknown (or older than
//     DefaultFeedbackMaxAge);
//   - 409 when the request already has a feedback rating: the first rating
//     stands, so a user cannot outvote the others by repeating theirs;
//   - 405 for other methods, 503 when ClickHouse fails.
//
// Errors use the OpenAI error shape. The handler does no authentication:
// the caller mounts it behind its own.
func (s *ScoreStore) FeedbackHandler() http.Handler {
	return http.HandlerFunc(s.serveFeedback)
}

func (s *ScoreStore) serveFeedback(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, "invalid_request_error", "method_not_allowed", "method "+r.Method+" not allowed")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxFeedbackBody))
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "invalid_body", "read body: "+err.Error())
		return
	}
	fb, score, err := parseFeedback(body)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "invalid_feedback", err.Error())
		return
	}
	row, err := s.storeFeedback(r.Context(), fb, score)
	switch {
	case errors.Is(err, errRequestNotFound):
		writeError(w, http.StatusNotFound, "invalid_request_error", "request_not_found",
			fmt.Sprintf("no request with id %q: it is unknown or older than %v", fb.RequestID, s.maxAge))
		return
	case errors.Is(err, errAlreadyRated):
		writeError(w, http.StatusConflict, "invalid_request_error", "already_rated",
			fmt.Sprintf("request %q already has a rating; the first one stands", fb.RequestID))
		return
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, "server_error", "storage_unavailable", "store feedback: "+err.Error())
		return
	}
	writeJSON(w, http.StatusCreated, FeedbackResponse{
		RequestID: row.RequestID, Model: row.Model, Version: row.Version, Score: row.Score, Source: row.Source,
	})
}

// parseFeedback decodes and checks a Feedback body and returns its score.
func parseFeedback(body []byte) (Feedback, float64, error) {
	var fb Feedback
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&fb); err != nil {
		return fb, 0, fmt.Errorf("malformed JSON body: %w", err)
	}
	if dec.More() {
		return fb, 0, errors.New("malformed JSON body: more than one value")
	}
	fb.RequestID = strings.TrimSpace(fb.RequestID)
	if fb.RequestID == "" {
		return fb, 0, errors.New("missing required field: request_id")
	}
	if len(fb.Comment) > MaxFeedbackComment {
		return fb, 0, fmt.Errorf("comment is longer than %d bytes", MaxFeedbackComment)
	}
	switch {
	case fb.Score != nil && fb.Rating != "":
		return fb, 0, errors.New("give either score or rating, not both")
	case fb.Score != nil:
		if !(*fb.Score >= 0 && *fb.Score <= 1) {
			return fb, 0, fmt.Errorf("score must be within [0, 1], got %v", *fb.Score)
		}
		return fb, *fb.Score, nil
	case fb.Rating == "up":
		return fb, 1, nil
	case fb.Rating == "down":
		return fb, 0, nil
	case fb.Rating != "":
		return fb, 0, fmt.Errorf(`rating must be "up" or "down", got %q`, fb.Rating)
	}
	return fb, 0, errors.New("missing score or rating")
}

// storeFeedback finds the request fb rates and writes its score, unless
// the request already has a feedback rating.
func (s *ScoreStore) storeFeedback(ctx context.Context, fb Feedback, score float64) (Score, error) {
	row, err := s.waitForRequest(ctx, fb.RequestID)
	if err != nil {
		return Score{}, err
	}
	row.Score, row.Source, row.Comment = score, SourceFeedback, fb.Comment

	s.feedbackMu.Lock()
	defer s.feedbackMu.Unlock()
	var n uint64
	q := fmt.Sprintf("SELECT count() FROM %s.%s WHERE date = %s AND request_id = ? AND source = ?", s.db, Table, dateLit(row.Time))
	if err := s.conn.QueryRow(ctx, q, row.RequestID, SourceFeedback).Scan(&n); err != nil {
		return Score{}, fmt.Errorf("look up earlier rating: %w", err)
	}
	if n > 0 {
		return Score{}, errAlreadyRated
	}
	return row, s.Write(ctx, []Score{row})
}

// waitForRequest polls lookupRequest until the row appears, lookupWait
// passes or ctx ends.
func (s *ScoreStore) waitForRequest(ctx context.Context, id string) (Score, error) {
	deadline := s.now().Add(s.lookupWait)
	for {
		row, err := s.lookupRequest(ctx, id)
		if !errors.Is(err, errRequestNotFound) || !s.now().Before(deadline) {
			return row, err
		}
		if s.missed != nil {
			s.missed(id)
		}
		select {
		case <-ctx.Done():
			return Score{}, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// lookupRequest reads the time, model, version and forced flag of request
// id, looking back maxAge days.
func (s *ScoreStore) lookupRequest(ctx context.Context, id string) (Score, error) {
	q := fmt.Sprintf("SELECT ts_ms, model, version, forced FROM %s.%s WHERE date >= %s AND request_id = ? LIMIT 1",
		s.db, wire.TableRequests, dateLit(s.now().Add(-s.maxAge)))
	rows, err := s.conn.Query(ctx, q, id)
	if err != nil {
		if isUnknownTable(err) {
			return Score{}, errRequestNotFound
		}
		return Score{}, fmt.Errorf("look up request %s: %w", id, err)
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return Score{}, fmt.Errorf("look up request %s: %w", id, err)
		}
		return Score{}, errRequestNotFound
	}
	var (
		tsMs   uint64
		forced uint8
		out    = Score{RequestID: id}
	)
	if err := rows.Scan(&tsMs, &out.Model, &out.Version, &forced); err != nil {
		return Score{}, fmt.Errorf("look up request %s: %w", id, err)
	}
	out.Time, out.Forced = time.UnixMilli(int64(tsMs)).UTC(), forced == 1
	return out, nil
}

// isUnknownTable reports ClickHouse's UNKNOWN_TABLE (code 60): the
// telemetry writer has not created the requests table yet.
func isUnknownTable(err error) bool {
	var ex *clickhouse.Exception
	return errors.As(err, &ex) && ex.Code == 60
}

type apiError struct {
	Error apiErrorBody `json:"error"`
}

type apiErrorBody struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    string  `json:"code"`
}

func writeError(w http.ResponseWriter, status int, typ, code, msg string) {
	writeJSON(w, status, apiError{apiErrorBody{Message: msg, Type: typ, Code: code}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("content-type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
