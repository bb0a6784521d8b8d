-- Invoices (SPEC §6, issue #23): one per closed subscription period, issued in the transaction
-- that closes the period. UNIQUE (subscription_id, period_start) is the claim: a period is
-- invoiced once, whichever node or command closes it first. Money in minor units.

CREATE TABLE invoices (
    id              TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    subscription_id TEXT NOT NULL,
    plan            TEXT NOT NULL,              -- the plan at the end of the period
    period_start    TEXT NOT NULL,
    period_end      TEXT NOT NULL,
    amount          INTEGER NOT NULL,             -- the sum of the lines
    currency        TEXT NOT NULL,
    status          TEXT NOT NULL,              -- draft | open | paid | void
    date            TEXT NOT NULL,              -- issued
    due_date        TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    paid_at         TEXT,
    voided_at       TEXT,
    UNIQUE (subscription_id, period_start)
);
CREATE INDEX invoices_organization_idx ON invoices (organization_id, id);

CREATE TABLE invoice_lines (
    id           TEXT PRIMARY KEY,
    invoice_id   TEXT NOT NULL REFERENCES invoices (id) ON DELETE CASCADE,
    position     INTEGER NOT NULL,
    kind         TEXT NOT NULL,                 -- base | overage | proration_credit | proration_charge
    description  TEXT NOT NULL,
    quantity     INTEGER NOT NULL,
    unit_amount  INTEGER NOT NULL,
    amount       INTEGER NOT NULL,
    period_start TEXT NOT NULL,
    period_end   TEXT NOT NULL,
    UNIQUE (invoice_id, position)
);

-- Every plan change of a subscription (PATCH {plan}), written in the change's transaction: the
-- invoice of the period it falls in prorates from it.
CREATE TABLE subscription_changes (
    id              TEXT PRIMARY KEY,
    subscription_id TEXT NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    changed_at      TEXT NOT NULL,
    from_plan       TEXT NOT NULL,
    from_amount     INTEGER NOT NULL,
    to_plan         TEXT NOT NULL,
    to_amount       INTEGER NOT NULL,
    currency        TEXT NOT NULL
);
CREATE INDEX subscription_changes_subscription_idx ON subscription_changes (subscription_id, changed_at);

-- Plans' prices of usage beyond a limit: {"<limit key>": {"per": units, "amount": minor units}}.
ALTER TABLE plans ADD COLUMN overage_prices TEXT NOT NULL DEFAULT '{}';
