package chwriter

// The first queries a user runs against the telemetry, as docs/telemetry.md
// shows them. A test runs each against the real server and checks the doc
// quotes them verbatim. All run on ClickHouse 18.16. Forced requests (pinned
// with x-llmcanary-force) are excluded, as they are from the statistics.
const (
	// QueryTTFTByVersion: time to first token per version over the last hour,
	// successful requests only.
	QueryTTFTByVersion = `SELECT
    model,
    version,
    count() AS requests,
    quantile(0.5)(ttft_ms) AS p50_ttft_ms,
    quantile(0.99)(ttft_ms) AS p99_ttft_ms
FROM llmcanary.requests
WHERE ts >= now() - INTERVAL 1 HOUR
  AND forced = 0
  AND failure = ''
GROUP BY model, version
ORDER BY model, version`

	// QueryErrorRateByVersion: share of failed requests per version over the
	// last hour, with the failures split into server-side and rate limiting.
	QueryErrorRateByVersion = `SELECT
    model,
    version,
    count() AS requests,
    countIf(failure != '') AS failures,
    countIf(failure != '') / count() AS error_rate,
    countIf(failure IN ('http_5xx', 'upstream_reset', 'truncated')) AS server_failures,
    countIf(failure = 'http_429') AS rate_limited
FROM llmcanary.requests
WHERE ts >= now() - INTERVAL 1 HOUR
  AND forced = 0
GROUP BY model, version
ORDER BY model, version`

	// QueryCostPerRequest: average and total cost per version over the last
	// day.
	QueryCostPerRequest = `SELECT
    model,
    version,
    count() AS requests,
    avg(cost_usd) AS cost_per_request_usd,
    sum(cost_usd) AS total_cost_usd
FROM llmcanary.requests
WHERE ts >= now() - INTERVAL 1 DAY
  AND forced = 0
GROUP BY model, version
ORDER BY model, version`

	// QueryTokensPerResponse: length of successful responses per version
	// over the last hour, and how often the token count came from the
	// upstream's usage block rather than from counting chunks.
	QueryTokensPerResponse = `SELECT
    model,
    version,
    count() AS responses,
    avg(completion_tokens) AS avg_completion_tokens,
    quantile(0.5)(completion_tokens) AS p50_completion_tokens,
    avg(prompt_tokens) AS avg_prompt_tokens,
    avg(tokens_from_usage) AS share_from_usage
FROM llmcanary.requests
WHERE ts >= now() - INTERVAL 1 HOUR
  AND forced = 0
  AND failure = ''
GROUP BY model, version
ORDER BY model, version`

	// QueryRequestLogByVersion: every request through Envoy per version
	// over the last hour, from the access log — measured or not, so the
	// counts are complete whatever the sample rates — with the server
	// errors (a 5xx, or the pool resetting, refusing, timing out, going
	// idle or breaking its answer off), rate limiting, and how many of the requests were measured.
	// The gateway's own answers are left out.
	QueryRequestLogByVersion = `SELECT
    model,
    version,
    count() AS requests,
    countIf(status >= 500 OR hasAny(splitByChar(',', response_flags), ['UR', 'UC', 'UF', 'UT', 'SI', 'UPE'])) AS server_errors,
    server_errors / requests AS error_rate,
    countIf(status = 429) AS rate_limited,
    countIf(sample_rate > 0) AS measured
FROM llmcanary.request_log
WHERE ts >= now() - INTERVAL 1 HOUR
  AND gateway = 0
  AND forced = 0
GROUP BY model, version
ORDER BY model, version`
)
