-- Executions (issue 8): one row per run, one per block state, and the event log that editors
-- replay from. Events are written before they are sent, so a seq is never reused.

CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY,
    workflow_id TEXT NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users (id),
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    input TEXT NOT NULL,
    options TEXT NOT NULL,
    output TEXT,
    -- What ran: the blocks and connections as JSON and the document's state vector.
    graph TEXT NOT NULL,
    state_vector BYTEA NOT NULL,
    current_block_id TEXT,
    tokens_used BIGINT NOT NULL DEFAULT 0,
    cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    started_at BIGINT NOT NULL,
    completed_at BIGINT,
    duration_ms BIGINT,
    error TEXT,
    idempotency_key TEXT,
    rerun_of TEXT,
    created_at BIGINT NOT NULL,
    UNIQUE (workflow_id, user_id, idempotency_key)
);
CREATE INDEX IF NOT EXISTS executions_by_workflow ON executions (workflow_id, id);
CREATE INDEX IF NOT EXISTS executions_by_workspace ON executions (workspace_id);
CREATE INDEX IF NOT EXISTS executions_by_user ON executions (user_id);
CREATE INDEX IF NOT EXISTS executions_by_status ON executions (status);

CREATE TABLE IF NOT EXISTS execution_blocks (
    execution_id TEXT NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    block_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'waiting', 'completed', 'failed', 'skipped')),
    attempt BIGINT NOT NULL DEFAULT 1,
    output TEXT,
    error TEXT,
    provider TEXT,
    model TEXT,
    tokens_used BIGINT NOT NULL DEFAULT 0,
    cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    -- A delay's or a human block's deadline (ms since the epoch), kept across restarts.
    wake_at BIGINT,
    decision TEXT,
    started_at BIGINT NOT NULL,
    completed_at BIGINT,
    PRIMARY KEY (execution_id, block_id)
);

CREATE TABLE IF NOT EXISTS execution_events (
    execution_id TEXT NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (execution_id, seq)
);

ALTER TABLE ai_provider_configs ADD COLUMN base_url TEXT;
