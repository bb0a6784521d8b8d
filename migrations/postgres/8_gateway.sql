-- AI gateway: the organization's upstream providers and the usage log.

CREATE TABLE providers (
    id              TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    provider        TEXT NOT NULL,              -- openai | anthropic | google | azure | openai_compatible | mock
    name            TEXT NOT NULL,
    base_url        TEXT,
    api_key         TEXT,                       -- encrypted with the master key; never returned
    models          TEXT NOT NULL DEFAULT '[]', -- JSON array; empty = any model
    priority        BIGINT NOT NULL DEFAULT 0, -- lower first
    enabled         BOOLEAN NOT NULL DEFAULT TRUE,
    environment     TEXT NOT NULL DEFAULT 'live',
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX providers_org_idx ON providers (organization_id, priority);

CREATE TABLE usage_logs (
    id                TEXT PRIMARY KEY,
    organization_id   TEXT NOT NULL,
    key_id            TEXT NOT NULL,
    environment       TEXT NOT NULL,
    provider          TEXT NOT NULL,
    model             TEXT NOT NULL,
    path              TEXT NOT NULL,
    status            BIGINT NOT NULL,
    latency_ms        BIGINT NOT NULL,
    ttfb_ms           BIGINT NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    total_tokens      BIGINT NOT NULL,
    cost_usd          DOUBLE PRECISION NOT NULL,
    streamed          BOOLEAN NOT NULL,
    violation_ids     TEXT NOT NULL DEFAULT '[]',
    created_at        TEXT NOT NULL
);
CREATE INDEX usage_logs_org_idx ON usage_logs (organization_id, id);
