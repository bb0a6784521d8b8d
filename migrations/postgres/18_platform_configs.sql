-- Platform configuration (SPEC §8): one row per key an admin has set (`PUT /v1/admin/configs/{key}`);
-- a key without a row has its default. The keys, their types, defaults and bounds are in code
-- (`src/platform/mod.rs`), not here; `value` is the JSON value as text. Every node keeps the rows in
-- memory and reads them again when a change is announced on the invalidation bus.
CREATE TABLE platform_configs (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    updated_by TEXT                   -- the admin's user id; NULL for the system
);

-- The platform statistics read the last 24 hours of the usage rollups across organizations.
CREATE INDEX usage_hourly_hour_idx ON usage_hourly (hour);
