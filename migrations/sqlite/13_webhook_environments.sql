-- Webhook endpoints belong to an environment (SPEC §4): a caller confined to one sees and
-- changes that environment's endpoints only, and each receives its environment's events.
ALTER TABLE webhook_endpoints ADD COLUMN environment TEXT NOT NULL DEFAULT 'live';
