package local

import (
	"context"
	"path/filepath"
	"time"

	"github.com/llmcanary/llmcanary/extproc/extprocsvc"
)

// startTelemetry starts the telemetry service in process, as `llmcanary
// extproc` runs it, on free loopback ports, writing to the stack's
// ClickHouse (or cluster) and flushing every 200 ms so that tests see rows quickly.
// Stopping the stack cuts its open streams at once (no drain).
func (l *Local) startTelemetry(o Options) (*extprocsvc.Service, error) {
	to := extprocsvc.Defaults()
	to.Listen, to.MetricsListen = "127.0.0.1:0", "127.0.0.1:0"
	to.ClickHouse, to.SpoolDir = l.ClickHouse.Addr, filepath.Join(o.Dir, "spool")
	if len(l.Shards) > 0 {
		to.ClickHouse, to.ClickHouseCluster = "", ClusterName
		for _, ch := range l.Shards {
			to.ClickHouseShards = append(to.ClickHouseShards, ch.Addr)
		}
	}
	to.CaptureRate, to.CaptureMax = o.Capture.Rate, o.Capture.MaxBytes
	to.DrainTimeout, to.FlushInterval, to.Logger = 0, 200*time.Millisecond, o.Log
	if l.Certs != "" {
		to.TLS = l.Certs.ServerFiles()
	}
	// The stack, not a caller's context, decides when it stops.
	return extprocsvc.Start(context.Background(), to)
}
