-- Usage threshold warnings (SPEC §6 "Billing details", issue #23): one row per organization,
-- quantity, usage period and threshold (80 or 100 % of the plan's limit). The insert is the
-- claim: `usage.threshold_reached` is emitted in the transaction whose insert succeeded, so a
-- warning is sent once per period across nodes and restarts.

CREATE TABLE usage_threshold_notices (
    organization_id   TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    quantity          TEXT NOT NULL,              -- api_requests | gateway_requests | … | projects
    period            TEXT NOT NULL,              -- the usage counters' period key
    threshold_percent INTEGER NOT NULL,           -- 80 | 100
    used              INTEGER NOT NULL,
    limit_value       INTEGER NOT NULL,
    created_at        TEXT NOT NULL,
    PRIMARY KEY (organization_id, quantity, period, threshold_percent)
);
