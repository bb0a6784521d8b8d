-- API keys. The key material is stored only as SHA-256, in api_key_secrets: one current secret
-- per key, plus the previous one during a rotation's grace period.

CREATE TABLE api_keys (
    id               TEXT PRIMARY KEY,
    organization_id  TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name             TEXT NOT NULL,
    type             TEXT NOT NULL,              -- secret | publishable
    environment      TEXT NOT NULL,              -- live | test
    key_preview      TEXT NOT NULL,
    scopes           TEXT NOT NULL,              -- JSON array
    allowed_origins  TEXT NOT NULL DEFAULT '[]', -- JSON array
    rate_limit       TEXT,                       -- JSON {requests_per_minute, tokens_per_minute?}
    project_id       TEXT REFERENCES projects (id) ON DELETE SET NULL,
    status           TEXT NOT NULL,              -- active | disabled | revoked (expired is derived)
    created_by       TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    last_used_at     TEXT,
    expires_at       TEXT,
    rotated_at       TEXT,
    revoked_at       TEXT,
    grace_expires_at TEXT
);
CREATE INDEX api_keys_org_idx ON api_keys (organization_id, environment);

CREATE TABLE api_key_secrets (
    secret_hash      TEXT PRIMARY KEY,
    key_id           TEXT NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    created_at       TEXT NOT NULL,
    grace_expires_at TEXT                        -- NULL: the current secret
);
CREATE INDEX api_key_secrets_key_idx ON api_key_secrets (key_id);
