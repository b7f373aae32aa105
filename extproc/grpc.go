package extproc

import "google.golang.org/grpc"

// Flow-control windows of the service's gRPC server (see ServerOptions).
const (
	// streamWindow lets Envoy send a response's body messages without
	// waiting for the service to read them: a whole non-streamed body
	// of maxJSONBody fits in four windows.
	streamWindow = 1 << 20
	// connWindow is shared by the streams of one Envoy connection.
	connWindow = 16 << 20
)

// ServerOptions are the gRPC server options the service is meant to run
// with; pass them to grpc.NewServer (with the credentials) before Register.
//
// Fixed flow-control windows turn off grpc-go's bandwidth-delay estimator,
// which otherwise pings the client after every burst of data it reads to
// size the window: ext_proc's traffic is many small messages apart in time
// (one per streamed token), so that was a ping, a write and Envoy's
// acknowledgement per body message: BenchmarkServiceCPU measured 20–22 µs
// of the service's CPU per body message with it, 15–16 without. A window only bounds how much Envoy
// may send ahead of the service's reading; memory goes only to what was
// sent and not yet read.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.InitialWindowSize(streamWindow),
		grpc.InitialConnWindowSize(connWindow),
	}
}
