-- AI gateway: the organization's upstream providers and the usage log.

CREATE TABLE providers (
    id              TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    provider        TEXT NOT NULL,              -- openai | anthropic | google | azure | openai_compatible | mock
    name            TEXT NOT NULL,
    base_url        TEXT,
    api_key         TEXT,                       -- encrypted with the master key; never returned
    models          TEXT NOT NULL DEFAULT '[]', -- JSON array; empty = any model
    priority        INTEGER NOT NULL DEFAULT 0, -- lower first
    enabled         INTEGER NOT NULL DEFAULT 1,
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
    status            INTEGER NOT NULL,
    latency_ms        INTEGER NOT NULL,
    ttfb_ms           INTEGER NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    total_tokens      INTEGER NOT NULL,
    cost_usd          REAL NOT NULL,
    streamed          INTEGER NOT NULL,
    violation_ids     TEXT NOT NULL DEFAULT '[]',
    created_at        TEXT NOT NULL
);
CREATE INDEX usage_logs_org_idx ON usage_logs (organization_id, id);
