-- Foundation: accounts, tenants, membership and global settings. Later capabilities add their
-- own migrations. Timestamps are TEXT in one fixed RFC 3339 form; JSON is TEXT; booleans are
-- INTEGER 0/1 here (BOOLEAN on PostgreSQL): the Any driver cannot decode SQLite BOOLEAN.

CREATE TABLE users (
    id                TEXT PRIMARY KEY,
    email             TEXT NOT NULL,          -- stored lower-cased: unique case-insensitively
    name              TEXT NOT NULL DEFAULT '',
    password_hash     TEXT,
    status            TEXT NOT NULL DEFAULT 'active',
    email_verified    INTEGER NOT NULL DEFAULT 0,
    mfa_enabled       INTEGER NOT NULL DEFAULT 0,
    is_platform_admin INTEGER NOT NULL DEFAULT 0,
    metadata          TEXT NOT NULL DEFAULT '{}',
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    last_login        TEXT,
    CONSTRAINT users_email_key UNIQUE (email)
);

CREATE TABLE organizations (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    slug        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    website     TEXT NOT NULL DEFAULT '',
    timezone    TEXT NOT NULL DEFAULT 'UTC',
    status      TEXT NOT NULL DEFAULT 'active',
    plan        TEXT NOT NULL DEFAULT 'smb',
    settings    TEXT NOT NULL DEFAULT '{}',
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    CONSTRAINT organizations_slug_key UNIQUE (slug)
);

CREATE TABLE memberships (
    id              TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    user_id         TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role            TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    CONSTRAINT memberships_user_key UNIQUE (organization_id, user_id)
);
CREATE INDEX memberships_user_idx ON memberships (user_id);

CREATE TABLE global_configs (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
