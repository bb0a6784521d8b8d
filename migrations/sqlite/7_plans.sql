-- Plans: the catalogue (SPEC §5, §6). Rate limits and monthly quotas come from here, not code.
-- `limits` and `features` are JSON objects stored as TEXT; `amount` is in minor units (cents).

CREATE TABLE plans (
    id               TEXT PRIMARY KEY,          -- smb | midmarket | enterprise | …
    name             TEXT NOT NULL,
    amount           INTEGER NOT NULL,
    currency         TEXT NOT NULL,
    billing_interval TEXT NOT NULL,             -- month | year (the API calls it `interval`)
    limits           TEXT NOT NULL,
    features         TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);

INSERT INTO plans (id, name, amount, currency, billing_interval, limits, features, created_at, updated_at) VALUES
('smb', 'SMB', 4900, 'usd', 'month',
 '{"requests_per_hour":1000,"api_requests_per_month":100000,"gateway_requests_per_month":50000,"gateway_tokens_per_month":10000000,"members":10,"projects":5}',
 '{"sso":false,"audit_log_retention_days":30,"webhooks":true,"support":"email"}',
 '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z'),
('midmarket', 'MidMarket', 49900, 'usd', 'month',
 '{"requests_per_hour":5000,"api_requests_per_month":1000000,"gateway_requests_per_month":500000,"gateway_tokens_per_month":100000000,"members":50,"projects":25}',
 '{"sso":true,"audit_log_retention_days":90,"webhooks":true,"support":"priority"}',
 '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z'),
('enterprise', 'Enterprise', 199900, 'usd', 'month',
 '{"requests_per_hour":10000,"api_requests_per_month":10000000,"gateway_requests_per_month":5000000,"gateway_tokens_per_month":1000000000,"members":1000,"projects":200}',
 '{"sso":true,"audit_log_retention_days":365,"webhooks":true,"support":"dedicated"}',
 '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z');

-- One `quota.exceeded` event per organization, metric and period: the insert that succeeds emits.
CREATE TABLE quota_notices (
    organization_id TEXT NOT NULL,
    metric          TEXT NOT NULL,
    period          TEXT NOT NULL,              -- YYYY-MM (UTC)
    created_at      TEXT NOT NULL,
    PRIMARY KEY (organization_id, metric, period)
);
