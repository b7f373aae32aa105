// Package envoytest proves the ext_proc telemetry service inside a real
// Envoy: a static bootstrap built from go-control-plane protos and the
// extproc config builders, an in-test SSE upstream with controlled timing,
// and the service on loopback. Its tests fail when Envoy is missing; its
// benchmark measures the service's overhead against Envoy alone.
package envoytest
