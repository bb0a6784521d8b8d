-- Events: the append-only audit log, webhook endpoints, and the transactional outbox of webhook
-- events with one row per delivery attempt. Timestamps are TEXT in one fixed RFC 3339 form; JSON
-- is TEXT; booleans are INTEGER 0/1 here (BOOLEAN on PostgreSQL).

-- Append-only: no code path updates or deletes a row. No foreign keys, so that the record of a
-- change outlives the organization, user or key it names.
CREATE TABLE audit_events (
    id              TEXT PRIMARY KEY,          -- aud_… (time-sortable: the keyset order)
    actor_type      TEXT NOT NULL,             -- user | api_key | system
    actor_id        TEXT,
    action          TEXT NOT NULL,             -- <resource>.<verb>
    resource_type   TEXT NOT NULL,
    resource_id     TEXT,
    organization_id TEXT,                      -- NULL: platform-level
    ip_address      TEXT,
    user_agent      TEXT,
    request_id      TEXT,
    metadata        TEXT NOT NULL DEFAULT '{}',
    created_at      TEXT NOT NULL
);
CREATE INDEX audit_events_org_idx ON audit_events (organization_id, id);
CREATE INDEX audit_events_created_idx ON audit_events (created_at);

-- organization_id NULL: a platform endpoint, which receives every organization's events.
CREATE TABLE webhook_endpoints (
    id                         TEXT PRIMARY KEY,      -- wh_…
    organization_id            TEXT REFERENCES organizations (id) ON DELETE CASCADE,
    url                        TEXT NOT NULL,
    description                TEXT NOT NULL DEFAULT '',
    events                     TEXT NOT NULL,         -- JSON array of event types, or ["*"]
    enabled                    INTEGER NOT NULL DEFAULT 1,
    disabled_reason            TEXT,
    secret_ciphertext          TEXT NOT NULL,         -- master-key encrypted, bound to the id
    previous_secret_ciphertext TEXT,                  -- still signs until previous_secret_expires_at
    previous_secret_expires_at TEXT,
    failing_since              TEXT,                  -- first failure of the current failing run
    created_at                 TEXT NOT NULL,
    updated_at                 TEXT NOT NULL
);
CREATE INDEX webhook_endpoints_org_idx ON webhook_endpoints (organization_id);

-- The outbox: one row per event that had at least one subscriber, holding the exact body sent.
CREATE TABLE webhook_events (
    id              TEXT PRIMARY KEY,          -- evt_…, also the webhook-id header
    event_type      TEXT NOT NULL,
    organization_id TEXT,
    payload         TEXT NOT NULL,             -- {"type", "timestamp", "data"}
    created_at      TEXT NOT NULL
);

-- One row per attempt to deliver one event to one endpoint. A pending row is due at
-- next_attempt_at; a worker claims it (status 'delivering', locked_by, locked_until); a row whose
-- lease ran out is claimed again. A failed attempt names when the next one is due.
CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY,          -- del_…
    endpoint_id     TEXT NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id        TEXT NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    event_type      TEXT NOT NULL,
    status          TEXT NOT NULL,             -- pending | delivering | succeeded | failed
    attempt         INTEGER NOT NULL,
    manual          INTEGER NOT NULL DEFAULT 0,
    response_status INTEGER,
    response_body   TEXT,                      -- size-capped excerpt
    error           TEXT,
    latency_ms      INTEGER,
    next_attempt_at TEXT,
    locked_by       TEXT,
    locked_until    TEXT,
    created_at      TEXT NOT NULL,
    completed_at    TEXT
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_endpoint_idx ON webhook_deliveries (endpoint_id, id);
CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (event_id);
