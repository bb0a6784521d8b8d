-- Hourly rollups of the usage log, so that analytics/stats stays fast at any volume. The usage
-- writer adds each batch to them in the transaction that stores the batch's log entries; stats
-- reads full hours from here and only the partial hours at a window's edges from usage_logs.

CREATE TABLE usage_hourly (
    organization_id   TEXT NOT NULL,
    environment       TEXT NOT NULL,
    hour              TEXT NOT NULL,   -- 2026-01-15T10:00:00.000000Z
    model             TEXT NOT NULL,
    provider          TEXT NOT NULL,
    key_id            TEXT NOT NULL,
    requests          BIGINT NOT NULL,
    errors            BIGINT NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cost_usd          DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (organization_id, hour, environment, model, provider, key_id)
);

-- Latency histogram per rollup row: `bucket` is the lower bound in ms of a bucket that is exact
-- below 64 ms and keeps 6 significant bits above (at most 1.6 % wide).
CREATE TABLE usage_hourly_latency (
    organization_id TEXT NOT NULL,
    environment     TEXT NOT NULL,
    hour            TEXT NOT NULL,
    model           TEXT NOT NULL,
    provider        TEXT NOT NULL,
    key_id          TEXT NOT NULL,
    bucket          BIGINT NOT NULL,
    count           BIGINT NOT NULL,
    PRIMARY KEY (organization_id, hour, environment, model, provider, key_id, bucket)
);

-- Entries logged before this migration.
INSERT INTO usage_hourly
SELECT organization_id, environment, substr(created_at, 1, 13) || ':00:00.000000Z', model, provider, key_id,
       COUNT(*), SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_usd)
FROM usage_logs
GROUP BY organization_id, environment, substr(created_at, 1, 13) || ':00:00.000000Z', model, provider, key_id;

INSERT INTO usage_hourly_latency
SELECT organization_id, environment, hour, model, provider, key_id, bucket, COUNT(*)
FROM (SELECT organization_id, environment, substr(created_at, 1, 13) || ':00:00.000000Z' AS hour, model, provider, key_id,
      CASE
        WHEN latency_ms < 64 THEN latency_ms
        WHEN latency_ms < 128 THEN latency_ms - (latency_ms % 2)
        WHEN latency_ms < 256 THEN latency_ms - (latency_ms % 4)
        WHEN latency_ms < 512 THEN latency_ms - (latency_ms % 8)
        WHEN latency_ms < 1024 THEN latency_ms - (latency_ms % 16)
        WHEN latency_ms < 2048 THEN latency_ms - (latency_ms % 32)
        WHEN latency_ms < 4096 THEN latency_ms - (latency_ms % 64)
        WHEN latency_ms < 8192 THEN latency_ms - (latency_ms % 128)
        WHEN latency_ms < 16384 THEN latency_ms - (latency_ms % 256)
        WHEN latency_ms < 32768 THEN latency_ms - (latency_ms % 512)
        WHEN latency_ms < 65536 THEN latency_ms - (latency_ms % 1024)
        WHEN latency_ms < 131072 THEN latency_ms - (latency_ms % 2048)
        WHEN latency_ms < 262144 THEN latency_ms - (latency_ms % 4096)
        WHEN latency_ms < 524288 THEN latency_ms - (latency_ms % 8192)
        WHEN latency_ms < 1048576 THEN latency_ms - (latency_ms % 16384)
        WHEN latency_ms < 2097152 THEN latency_ms - (latency_ms % 32768)
        WHEN latency_ms < 4194304 THEN latency_ms - (latency_ms % 65536)
        WHEN latency_ms < 8388608 THEN latency_ms - (latency_ms % 131072)
        WHEN latency_ms < 16777216 THEN latency_ms - (latency_ms % 262144)
        WHEN latency_ms < 33554432 THEN latency_ms - (latency_ms % 524288)
        WHEN latency_ms < 67108864 THEN latency_ms - (latency_ms % 1048576)
        WHEN latency_ms < 134217728 THEN latency_ms - (latency_ms % 2097152)
        WHEN latency_ms < 268435456 THEN latency_ms - (latency_ms % 4194304)
        WHEN latency_ms < 536870912 THEN latency_ms - (latency_ms % 8388608)
        WHEN latency_ms < 1073741824 THEN latency_ms - (latency_ms % 16777216)
        WHEN latency_ms < 2147483648 THEN latency_ms - (latency_ms % 33554432)
        WHEN latency_ms < 4294967296 THEN latency_ms - (latency_ms % 67108864)
        WHEN latency_ms < 8589934592 THEN latency_ms - (latency_ms % 134217728)
        WHEN latency_ms < 17179869184 THEN latency_ms - (latency_ms % 268435456)
        WHEN latency_ms < 34359738368 THEN latency_ms - (latency_ms % 536870912)
        WHEN latency_ms < 68719476736 THEN latency_ms - (latency_ms % 1073741824)
        WHEN latency_ms < 137438953472 THEN latency_ms - (latency_ms % 2147483648)
        WHEN latency_ms < 274877906944 THEN latency_ms - (latency_ms % 4294967296)
        WHEN latency_ms < 549755813888 THEN latency_ms - (latency_ms % 8589934592)
        WHEN latency_ms < 1099511627776 THEN latency_ms - (latency_ms % 17179869184)
        ELSE latency_ms END AS bucket
      FROM usage_logs) AS bucketed
GROUP BY organization_id, environment, hour, model, provider, key_id, bucket;

-- The stats window reads a few partial hours of the log by time.
CREATE INDEX usage_logs_org_time_idx ON usage_logs (organization_id, created_at);
