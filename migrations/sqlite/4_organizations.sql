-- Organizations: invitations, projects, per-organization configuration and storage settings.

CREATE TABLE invitations (
    id              TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    email           TEXT NOT NULL,
    name            TEXT NOT NULL DEFAULT '',
    role            TEXT NOT NULL,
    token_hash      TEXT NOT NULL,
    status          TEXT NOT NULL,            -- pending | accepted | revoked (expired is derived)
    invited_by      TEXT,
    created_at      TEXT NOT NULL,
    sent_at         TEXT NOT NULL,
    expires_at      TEXT NOT NULL,
    accepted_at     TEXT,
    revoked_at      TEXT,
    CONSTRAINT invitations_token_hash_key UNIQUE (token_hash)
);
CREATE INDEX invitations_org_idx ON invitations (organization_id, status);

CREATE TABLE projects (
    id              TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    settings        TEXT NOT NULL DEFAULT '{}',
    allowed_origins TEXT NOT NULL DEFAULT '[]',
    redirect_urls   TEXT NOT NULL DEFAULT '[]',
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX projects_org_idx ON projects (organization_id);

CREATE TABLE org_configs (
    organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    key             TEXT NOT NULL,
    value           TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    PRIMARY KEY (organization_id, key)
);

CREATE TABLE org_storage (
    organization_id TEXT PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    provider        TEXT NOT NULL,
    bucket          TEXT NOT NULL,
    region          TEXT NOT NULL DEFAULT '',
    prefix          TEXT NOT NULL DEFAULT '',
    retention_days  INTEGER NOT NULL,
    credentials     TEXT,                     -- encrypted with the master key; never returned
    updated_at      TEXT NOT NULL
);
