// Package envoytest proves llmcanary's wasm filter inside a real Envoy: it
// builds the module, starts Envoy on loopback with the filter in front of a
// router whose weighted clusters are picked by x-llmcanary-bucket, and checks
// routing, stickiness, the force key and the error responses end to end. It
// has only tests and benchmarks.
package envoytest
