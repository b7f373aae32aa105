// Package wire names the HTTP headers, Envoy metadata keys and ClickHouse
// objects that llmcanary's parts agree on. It is the external contract of
// DESIGN.md in code: the wasm filter, the control plane, the ext_proc service
// and the analyzer all import these names instead of spelling them.
package wire

// Request headers.
const (
	// HeaderUserID is the first default identity source.
	HeaderUserID = "x-user-id"
	// HeaderBucket carries the sticky uint64 bucket. The wasm filter always
	// overwrites it; routes use it as WeightedCluster.header_name.
	HeaderBucket = "x-llmcanary-bucket"
	// HeaderModel carries the model a request is for. The wasm filter sets it
	// from the body's "model" field; routes match on it.
	HeaderModel = "x-llmcanary-model"
	// HeaderForce pins a version. It reaches the router only when the wasm
	// filter has checked HeaderKey; otherwise both are stripped.
	HeaderForce = "x-llmcanary-force"
	// HeaderKey is the operator's credential for HeaderForce. Never forwarded.
	HeaderKey = "x-llmcanary-key"
	// HeaderCategory routes a request category to a version chosen by the
	// operator (category overrides in the desired state).
	HeaderCategory = "x-llmcanary-category"
	// HeaderCohort names the cohort a request belongs to (e.g. internal),
	// set by a trusted hop in front of Envoy; the wasm filter honours it
	// only when the operator says that hop is trusted, or with a valid
	// HeaderKey, and removes it otherwise.
	HeaderCohort = "x-llmcanary-cohort"
	// HeaderAssigned is set by the wasm filter alone (a client's own is
	// always removed) when a cohort rule, not the bucket, decides the
	// request's version: AssignedOptIn or AssignedExcluded. The model's
	// cohort routes match it; the telemetry labels the request with it and
	// the analyzer leaves such requests out of the comparison (they are
	// not randomised).
	HeaderAssigned = "x-llmcanary-assigned"
	// HeaderRequestID is the request id: a client's own when well-formed,
	// else Envoy's or the wasm filter's. Every response carries it; it keys
	// the telemetry row and feedback.
	HeaderRequestID = "x-request-id"
	// HeaderSample and HeaderBackground carry two sampling keys of the
	// request's identity, each an integer in [0, SampleScale), set by the
	// wasm filter from the same keyed hash as the bucket and independent of
	// the bucket and of each other. Routes measure a stable request when its
	// HeaderSample key is below the stable sample's threshold (during a
	// rollout) or its HeaderBackground key below the background rate's (no
	// rollout), so a user's requests are all measured or none are.
	HeaderSample     = "x-llmcanary-sample"
	HeaderBackground = "x-llmcanary-background"
	// HeaderSampleRate is added by the route to a measured request: the
	// share of its arm's users that are measured, in (0, 1]. Envoy's access
	// log records it; absent means the request was not measured.
	HeaderSampleRate = "x-llmcanary-sample-rate"
)

// Values of HeaderAssigned.
const (
	// AssignedOptIn: an opt-in user, sent to the canary at any canary
	// weight above 0.
	AssignedOptIn = "opt_in"
	// AssignedExcluded: an excluded user or tenant, never sent to a canary.
	AssignedExcluded = "excluded"
)

// SampleScale is the range of the sampling keys: rates are set in steps
// of 1/SampleScale.
const SampleScale = 10000

// MetadataSampleRate is the gRPC metadata key under which Envoy opens a
// measured request's ext_proc stream with its sample rate (decimal). A
// stream without it was measured at rate 1.
const MetadataSampleRate = HeaderSampleRate

// MetadataCaptureAll is the gRPC metadata key under which Envoy opens the
// ext_proc stream of a request whose text must be kept whatever the
// service's capture rate (value "1"): stable's answers to the requests a
// shadow stage mirrors, each half of a judged pair.
const MetadataCaptureAll = "x-llmcanary-capture-all"

// gRPC metadata keys with which Envoy opens a timed request's ext_proc
// stream, set per route and per weighted cluster by the control plane:
// the cluster the route picked and what it serves (model, version, and
// its prices in USD per 1000 tokens, decimals). The service then needs
// nothing from Envoy's attributes. A stream without them (a route set by
// hand) is labelled from the request's own headers and priced at zero.
const (
	MetadataCluster          = "x-llmcanary-served-cluster"
	MetadataModel            = "x-llmcanary-served-model"
	MetadataVersion          = "x-llmcanary-served-version"
	MetadataPriceInputPer1K  = "x-llmcanary-price-input-per-1k"
	MetadataPriceOutputPer1K = "x-llmcanary-price-output-per-1k"
)

// MetadataShadowModel and MetadataShadowVersion are the gRPC metadata
// keys with which a shadow cluster's telemetry filter opens its streams:
// the stream observes a mirrored request of that model answered by that
// version. Only the control plane's configuration sets them, so a client
// cannot pass its request off as a mirror.
const (
	MetadataShadowModel   = "x-llmcanary-shadow-model"
	MetadataShadowVersion = "x-llmcanary-shadow-version"
)

// BodyFieldUser is the OpenAI request body's end-user field, the default
// identity source after HeaderUserID.
const BodyFieldUser = "user"

// Response headers.
const (
	// HeaderVersion names the version that served a response. Envoy adds it
	// per weighted cluster.
	HeaderVersion = "x-llmcanary-version"
	// HeaderServedBy is set by the simulated pool itself, so tests can check
	// that the upstream that answered is the one Envoy announced.
	HeaderServedBy = "x-sim-served-by"
)

// Response code details (Envoy's %RESPONSE_CODE_DETAILS%) of the gateway's
// own JSON answers. Envoy rewrites every other local reply, its plain-text
// ones, into an OpenAI-style JSON error; these already are one.
const (
	// DetailsFilterReply names the wasm filter's local replies.
	DetailsFilterReply = "llmcanary_filter"
	// DetailsDirectResponse is Envoy's name for a route's direct response.
	DetailsDirectResponse = "direct_response"
)

// MetadataNamespace is the filter_metadata key under which each version's
// cluster carries its model, version and prices.
const MetadataNamespace = "llmcanary"

// Cluster metadata fields under MetadataNamespace.
const (
	MetaModel            = "model"
	MetaVersion          = "version"
	MetaPriceInputPer1K  = "price_input_per_1k"
	MetaPriceOutputPer1K = "price_output_per_1k"
	// MetaShadow is true on a version's shadow cluster, which receives
	// only mirrored requests.
	MetaShadow = "shadow"
)

// ClickHouse objects.
const (
	Database = "llmcanary"
	// TableRequests has one row per measured request (the ext_proc
	// service's timing, tokens, cost, failure), at its sample rate.
	TableRequests = "requests"
	// TableRequestLog has one row per request through Envoy, measured or
	// not, from Envoy's gRPC access log: the complete request counts and
	// error rates per version, and the gateway's own answers (marked).
	TableRequestLog = "request_log"
	// TableCaptures holds the captured prompt and completion text of
	// sampled requests (written by the telemetry service, read by the
	// quality judge).
	TableCaptures = "captures"
	// TableShadow has one row per mirrored request answered by a shadow
	// version: its timing, failure and text, keyed by the request id of
	// the user's request it copies (whose answer is in TableRequests and
	// TableCaptures). It is never user traffic: no user saw these answers.
	TableShadow = "shadow_answers"

	// FailureClientCancel is the failure of a request whose client went
	// away first: recorded by the telemetry service, never counted
	// against the version by the analyzer.
	FailureClientCancel = "client_cancel"
)
