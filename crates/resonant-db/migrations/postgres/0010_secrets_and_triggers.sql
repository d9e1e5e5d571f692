-- Issue 20: workflows in production.

-- Per-workspace secrets, referenced from webhook blocks as {{ secrets.NAME }}. The value is
-- sealed with AES-256-GCM to the row id (as provider keys are) and never returned.
CREATE TABLE IF NOT EXISTS workspace_secrets (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    created_by TEXT NOT NULL REFERENCES users (id),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (workspace_id, name)
);

-- What starts a workflow without an editor: a webhook URL (POST /hooks/{id}) or a cron
-- schedule. Executions run as `run_as` (the user who created the trigger), against the
-- workflow's published version unless `target` is 'draft'.
CREATE TABLE IF NOT EXISTS triggers (
    id TEXT PRIMARY KEY,
    workflow_id TEXT NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('webhook', 'schedule')),
    name TEXT,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    target TEXT NOT NULL DEFAULT 'published' CHECK (target IN ('published', 'draft')),
    run_as TEXT NOT NULL REFERENCES users (id),
    -- webhook: 'hmac' or 'bearer', the sealed secret, the request headers passed on
    auth TEXT,
    secret TEXT,
    secret_last4 TEXT,
    pass_headers TEXT,
    -- schedule: the cron expression, its IANA time zone, the missed-run policy and the
    -- next tick not yet fired (Unix ms): nodes advance it with a compare-and-set
    cron TEXT,
    timezone TEXT,
    missed TEXT CHECK (missed IN ('skip', 'run-once')),
    next_fire_at BIGINT,
    last_fired_at BIGINT,
    -- why the last firing started nothing (no published version, token limit, …)
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS triggers_by_workflow ON triggers (workflow_id);
CREATE INDEX IF NOT EXISTS triggers_due ON triggers (next_fire_at) WHERE kind = 'schedule' AND enabled;

-- Signatures a webhook trigger accepted, so a captured request cannot be replayed within
-- the signature's 5-minute window; rows older than the window are pruned.
CREATE TABLE IF NOT EXISTS hook_signatures (
    trigger_id TEXT NOT NULL REFERENCES triggers (id) ON DELETE CASCADE,
    signature TEXT NOT NULL,
    seen_at BIGINT NOT NULL,
    PRIMARY KEY (trigger_id, signature)
);

-- Published versions: triggers run the version a workflow publishes. Its blocks and
-- connections are pinned as JSON when it is published, so a trigger firing reads one row.
ALTER TABLE workflows ADD COLUMN published_version_id TEXT;
ALTER TABLE workflows ADD COLUMN published_graph TEXT;

-- What started an execution and which version it ran (NULL: the live document).
ALTER TABLE executions ADD COLUMN trigger_id TEXT;
ALTER TABLE executions ADD COLUMN version_id TEXT;
-- When retention pruned its events, block rows and large values (--execution-retention-days):
-- the row stays, for the history and the usage it records.
ALTER TABLE executions ADD COLUMN pruned_at BIGINT;
CREATE INDEX IF NOT EXISTS executions_to_prune ON executions (completed_at) WHERE pruned_at IS NULL;
CREATE INDEX IF NOT EXISTS executions_by_trigger ON executions (trigger_id) WHERE trigger_id IS NOT NULL;
