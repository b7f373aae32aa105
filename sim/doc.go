// Package sim is a simulated inference pool: an OpenAI-compatible server
// shaped like vLLM's, standing in for real model servers in tests,
// benchmarks and the demo.
//
// A Profile says how one model version behaves: time to first token,
// inter-token latency, answer length, and the rates of errors (500), rate
// limits (429), mid-stream aborts, refusals and bad answers. Each request
// gets a Plan, a pure function of the profile's seed and the request
// (MakePlan), announced up front in x-sim-* response headers so a test can
// compare what it measured with what was injected.
//
// Quality is observable: a bad answer contains BadAnswerMarker, and a
// server in judge mode grades answers with JudgeScore, returning
// {"score": 0.0} or {"score": 1.0} as a chat completion.
package sim
