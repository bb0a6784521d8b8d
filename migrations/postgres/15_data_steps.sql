-- Data steps: changes to stored rows that SQL cannot express (Unicode NFKC for emails), run in
-- Rust at start after the migrations (`storage::migrations::run_data_steps`). A step is recorded
-- here once it has completed; a recorded step never runs again. `report` is the step's summary
-- (JSON).
CREATE TABLE data_steps (
    name         TEXT PRIMARY KEY,
    completed_at TEXT NOT NULL,
    report       TEXT NOT NULL DEFAULT '{}'
);
