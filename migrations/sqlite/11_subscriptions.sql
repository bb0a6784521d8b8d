-- Subscriptions (SPEC §6): one per organization; it sets the organization's plan.

CREATE TABLE subscriptions (
    id                   TEXT PRIMARY KEY,
    organization_id      TEXT NOT NULL UNIQUE REFERENCES organizations (id) ON DELETE CASCADE,
    plan                 TEXT NOT NULL,
    status               TEXT NOT NULL,              -- active | canceled
    billing_cycle_start  TEXT NOT NULL,
    billing_cycle_end    TEXT NOT NULL,
    amount               INTEGER NOT NULL,              -- minor units, from the plan when set
    currency             TEXT NOT NULL,
    billing_email        TEXT,
    auto_renew           INTEGER NOT NULL DEFAULT 1,
    cancel_at_period_end INTEGER NOT NULL DEFAULT 0,
    canceled_at          TEXT,
    created_at           TEXT NOT NULL,
    updated_at           TEXT NOT NULL
);
CREATE INDEX subscriptions_due_idx ON subscriptions (status, billing_cycle_end);
