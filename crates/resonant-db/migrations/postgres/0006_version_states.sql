-- B16: a version used to copy the whole document twice (its JSON and its Yjs state) on every
-- save. Each distinct document state of a workflow is now stored once in `version_states`,
-- keyed by a SHA-256 of its state vector and delete set, as a full state or as a delta
-- against an earlier state (`base_key`, at most 64 deltas deep); a version references its
-- state and its JSON is derived on read.
CREATE TABLE IF NOT EXISTS version_states (
    workflow_id TEXT NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    -- NULL: `data` is the full state; otherwise a delta applied on top of that state.
    base_key TEXT,
    -- Deltas between this state and a full one (0 for a full state).
    depth BIGINT NOT NULL DEFAULT 0,
    -- The state's v1 state vector, so the next save can compute a delta without rebuilding
    -- this state (NULL for states moved here by this migration: they are never a base).
    state_vector BYTEA,
    data BYTEA NOT NULL,
    stored_bytes BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (workflow_id, key)
);

ALTER TABLE workflow_versions ADD COLUMN state_key TEXT NOT NULL DEFAULT '';

-- Existing versions keep their state, full, under a key no hash can take.
INSERT INTO version_states (workflow_id, key, base_key, depth, state_vector, data, stored_bytes, created_at)
SELECT workflow_id, 'legacy:' || id, NULL, 0, NULL, state, octet_length(state), created_at FROM workflow_versions;
UPDATE workflow_versions SET state_key = 'legacy:' || id;

ALTER TABLE workflow_versions DROP COLUMN content;
ALTER TABLE workflow_versions DROP COLUMN state;
