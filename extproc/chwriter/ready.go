package chwriter

import (
	"context"
	"fmt"
	"strings"

	"github.com/llmcanary/llmcanary/internal/health"
)

// Ready is the telemetry service's readiness: whether a record written now
// is kept. It is nil while ClickHouse (every shard) takes the inserts;
// health.Degraded while a server is away and its spool still has room
// (every record is durable and replayed later, so Envoy should keep
// streaming here: a telemetry service taken out of rotation during a
// ClickHouse outage would lose what the spool exists to keep); an error
// once a spool is full and records are dropped.
func (w *Writer) Ready(context.Context) error {
	var away []string
	for _, sh := range w.shards {
		st := sh.requests.stats()
		switch {
		case st.ClickHouseLive:
		case st.SpoolBytes < w.o.SpoolMaxBytes:
			away = append(away, fmt.Sprintf("%s (spool %d of %d bytes)", sh.addr, st.SpoolBytes, w.o.SpoolMaxBytes))
		default:
			return fmt.Errorf("ClickHouse unreachable at %s and the spool is full (%d bytes): records are dropped", sh.addr, st.SpoolBytes)
		}
	}
	if len(away) > 0 {
		return health.Degraded(fmt.Sprintf("ClickHouse unreachable at %s; records are spooled and replayed when it is back", strings.Join(away, ", ")))
	}
	return nil
}
