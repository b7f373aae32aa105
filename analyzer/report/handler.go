package report

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/internal/httpapi"
)

// Getter is the rollout store as the report reads it
// (analyzer.RolloutStore, analyzer.EtcdStore).
type Getter interface {
	Get(id string) (*analyzer.Rollout, error)
}

// Handler serves GET /v1/rollouts/{id}/report: the rollout's report as
// one HTML page, read from store and from ClickHouse over conn (database
// "" means wire.Database). Mount it behind the rollout API's token
// (analyzer.API.Mount).
func Handler(store Getter, conn driver.Conn, database string, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.Default()
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ro, err := store.Get(r.PathValue("id"))
		if errors.Is(err, analyzer.ErrNotFound) {
			httpapi.WriteError(w, http.StatusNotFound, "not_found", err.Error())
			return
		}
		if err != nil {
			httpapi.WriteError(w, http.StatusInternalServerError, "internal", err.Error())
			return
		}
		d, err := Load(r.Context(), conn, database, ro, time.Now())
		if err != nil {
			httpapi.WriteError(w, http.StatusInternalServerError, "internal", err.Error())
			return
		}
		for _, m := range d.Missing {
			log.Warn("rollout report incomplete", "rollout", ro.ID, "missing", m)
		}
		var b bytes.Buffer
		if err := Write(&b, fmt.Sprintf("llmcanary rollout %s: %s %s → %s", ro.ID, ro.Model, ro.Stable, ro.Canary), []Data{d}); err != nil {
			httpapi.WriteError(w, http.StatusInternalServerError, "internal", err.Error())
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Disposition", fmt.Sprintf(`inline; filename="report-%s.html"`, ro.ID))
		_, _ = w.Write(b.Bytes())
	})
}
