-- Limits: monthly usage counters (SPEC §5 quotas), one row per (organization, metric, month).
-- Nodes add their deltas with an upsert, so the value is the sum over every node and restart.

CREATE TABLE usage_counters (
    organization_id TEXT NOT NULL,
    metric          TEXT NOT NULL,            -- api_requests | gateway_requests | gateway_tokens | …
    period          TEXT NOT NULL,            -- YYYY-MM (UTC)
    value           BIGINT NOT NULL DEFAULT 0,
    updated_at      TEXT NOT NULL,
    PRIMARY KEY (organization_id, metric, period)
);
CREATE INDEX usage_counters_period_idx ON usage_counters (period);
