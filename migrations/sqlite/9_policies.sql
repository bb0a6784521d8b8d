-- Gateway policies (SPEC §10) and the violations they record.

CREATE TABLE policies (
    id              TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    enabled         INTEGER NOT NULL DEFAULT 1,
    type            TEXT NOT NULL,              -- pii | secrets | keyword | regex | model_allowlist | ...
    config          TEXT NOT NULL DEFAULT '{}', -- JSON, normalized on write
    action          TEXT NOT NULL,              -- block | redact | flag
    applies_to      TEXT NOT NULL,              -- request | response | both
    severity        TEXT NOT NULL,              -- low | medium | high | critical
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX policies_org_idx ON policies (organization_id, id);

-- Append-only; excerpts are masked before they get here, never the raw match.
CREATE TABLE violations (
    id              TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    environment     TEXT NOT NULL,
    policy_id       TEXT NOT NULL,
    policy_name     TEXT NOT NULL,
    type            TEXT NOT NULL,
    action          TEXT NOT NULL,
    severity        TEXT NOT NULL,
    stage           TEXT NOT NULL,              -- request | response
    key_id          TEXT NOT NULL,
    log_id          TEXT NOT NULL,
    model           TEXT NOT NULL,
    matches         TEXT NOT NULL DEFAULT '[]', -- JSON [{type, excerpt}]
    created_at      TEXT NOT NULL
);
CREATE INDEX violations_org_idx ON violations (organization_id, id);
CREATE INDEX violations_log_idx ON violations (log_id);
