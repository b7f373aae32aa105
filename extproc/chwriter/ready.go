package chwriter

import (
	"context"
	"fmt"

	"github.com/llmcanary/llmcanary/internal/health"
)

// Ready is the telemetry service's readiness: whether a record written now
// is kept. It is nil while ClickHouse takes the inserts; health.Degraded
// while ClickHouse is away and the spool still has room (every record is
// durable and replayed later, so Envoy should keep streaming here: a
// telemetry service taken out of rotation during a ClickHouse outage
// would lose what the spool exists to keep); an error once the spool is
// full and records are dropped.
func (w *Writer) Ready(context.Context) error {
	st := w.Stats()
	switch {
	case st.ClickHouseLive:
		return nil
	case st.SpoolBytes < w.o.SpoolMaxBytes:
		return health.Degraded(fmt.Sprintf("ClickHouse unreachable at %s; records are spooled (%d of %d bytes) and replayed when it is back", w.o.Addr, st.SpoolBytes, w.o.SpoolMaxBytes))
	default:
		return fmt.Errorf("ClickHouse unreachable at %s and the spool is full (%d bytes): records are dropped", w.o.Addr, st.SpoolBytes)
	}
}
