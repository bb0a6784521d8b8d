-- Payments through a provider (Stripe; issue #23, docs/billing.md "Payments"). Written only when
-- a provider is configured.

-- The provider's customer of each organization (`cus_…`), made once and reused.
CREATE TABLE payment_customers (
    organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    provider        TEXT NOT NULL,              -- stripe
    customer_id     TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    PRIMARY KEY (organization_id, provider)
);

-- The provider's payment of an open invoice: one per invoice (the PaymentIntent is created with
-- the invoice id as its idempotency key). A row without `payment_intent_id` is a collection
-- that failed and is tried again by the next close run.
CREATE TABLE invoice_payments (
    invoice_id        TEXT PRIMARY KEY REFERENCES invoices (id) ON DELETE CASCADE,
    provider          TEXT NOT NULL,
    payment_intent_id TEXT,
    status            TEXT NOT NULL,            -- created | failed (no PaymentIntent yet) | payment_failed
    attempts          BIGINT NOT NULL,
    last_error        TEXT,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL
);

-- Provider webhook events already applied, by the provider's event id: a replayed delivery
-- changes nothing.
CREATE TABLE payment_events (
    event_id    TEXT NOT NULL,
    provider    TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    invoice_id  TEXT,
    received_at TEXT NOT NULL,
    PRIMARY KEY (provider, event_id)
);
