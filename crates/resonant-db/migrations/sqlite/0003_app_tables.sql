-- The seed's data model (architecture.md, "Database Schema"), in snake_case. Ids are text
-- (UUIDv7: time-ordered, so cursor pagination can order by id); times are Unix
-- milliseconds; JSON values are text. Executions arrive with the executions issue:
-- usage_records.execution_id is a plain column until then.

CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    external_id TEXT NOT NULL UNIQUE,
    email TEXT,
    name TEXT,
    image_url TEXT,
    stripe_customer_id TEXT,
    subscription_id TEXT,
    subscription_status TEXT,
    subscription_plan TEXT,
    tokens_used BIGINT NOT NULL DEFAULT 0,
    tokens_limit BIGINT NOT NULL DEFAULT 0,
    deleted_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS users_by_email ON users (lower(email));
CREATE INDEX IF NOT EXISTS users_by_stripe_customer ON users (stripe_customer_id);

CREATE TABLE IF NOT EXISTS workspaces (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    slug TEXT NOT NULL UNIQUE,
    owner_id TEXT NOT NULL REFERENCES users (id),
    plan TEXT NOT NULL DEFAULT 'free',
    settings TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS workspaces_by_owner ON workspaces (owner_id);

CREATE TABLE IF NOT EXISTS workspace_members (
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    joined_at BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, user_id)
);
CREATE INDEX IF NOT EXISTS workspace_members_by_user ON workspace_members (user_id);

CREATE TABLE IF NOT EXISTS invitations (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    email TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'member', 'viewer')),
    token_hash TEXT NOT NULL UNIQUE,
    invited_by TEXT NOT NULL REFERENCES users (id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    accepted_at BIGINT
);
CREATE INDEX IF NOT EXISTS invitations_by_workspace ON invitations (workspace_id);

CREATE TABLE IF NOT EXISTS workflows (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    created_by TEXT NOT NULL REFERENCES users (id),
    name TEXT NOT NULL,
    description TEXT,
    is_template BOOLEAN NOT NULL DEFAULT 0,
    is_public BOOLEAN NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'active', 'archived')),
    version BIGINT NOT NULL DEFAULT 0,
    parent_version_id TEXT,
    execution_count BIGINT NOT NULL DEFAULT 0,
    last_executed_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS workflows_by_workspace ON workflows (workspace_id);
CREATE INDEX IF NOT EXISTS workflows_by_creator ON workflows (created_by);
CREATE INDEX IF NOT EXISTS workflows_by_workspace_status ON workflows (workspace_id, status);
CREATE INDEX IF NOT EXISTS workflows_by_template ON workflows (is_template);
CREATE INDEX IF NOT EXISTS workflows_by_public ON workflows (is_public);

CREATE TABLE IF NOT EXISTS workflow_versions (
    id TEXT PRIMARY KEY,
    workflow_id TEXT NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    version BIGINT NOT NULL,
    name TEXT,
    message TEXT,
    content TEXT NOT NULL,
    state BLOB NOT NULL,
    created_by TEXT NOT NULL REFERENCES users (id),
    created_at BIGINT NOT NULL,
    UNIQUE (workflow_id, version)
);

CREATE TABLE IF NOT EXISTS comments (
    id TEXT PRIMARY KEY,
    workflow_id TEXT NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users (id),
    block_id TEXT,
    content TEXT NOT NULL,
    parent_id TEXT REFERENCES comments (id) ON DELETE CASCADE,
    resolved BOOLEAN NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS comments_by_workflow ON comments (workflow_id);
CREATE INDEX IF NOT EXISTS comments_by_block ON comments (block_id);
CREATE INDEX IF NOT EXISTS comments_by_parent ON comments (parent_id);

CREATE TABLE IF NOT EXISTS block_templates (
    id TEXT PRIMARY KEY,
    created_by TEXT NOT NULL REFERENCES users (id),
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    category TEXT NOT NULL,
    block_type TEXT NOT NULL CHECK (block_type IN ('input', 'ai', 'output', 'condition', 'transform')),
    config TEXT NOT NULL,
    is_public BOOLEAN NOT NULL DEFAULT 0,
    downloads BIGINT NOT NULL DEFAULT 0,
    rating REAL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS block_templates_by_creator ON block_templates (created_by);
CREATE INDEX IF NOT EXISTS block_templates_by_category ON block_templates (category);
CREATE INDEX IF NOT EXISTS block_templates_by_public ON block_templates (is_public);
CREATE INDEX IF NOT EXISTS block_templates_by_downloads ON block_templates (downloads);

CREATE TABLE IF NOT EXISTS ai_provider_configs (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    provider TEXT NOT NULL,
    api_key TEXT,
    api_key_last4 TEXT,
    is_enabled BOOLEAN NOT NULL DEFAULT 1,
    priority BIGINT NOT NULL DEFAULT 0,
    max_tokens_per_request BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (workspace_id, provider)
);

CREATE TABLE IF NOT EXISTS usage_records (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users (id),
    execution_id TEXT,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    total_tokens BIGINT NOT NULL,
    cost_usd REAL NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_records_by_workspace ON usage_records (workspace_id);
CREATE INDEX IF NOT EXISTS usage_records_by_user ON usage_records (user_id);
CREATE INDEX IF NOT EXISTS usage_records_by_workspace_date ON usage_records (workspace_id, created_at);

-- Webhook deliveries already processed, so a replayed event id changes nothing.
CREATE TABLE IF NOT EXISTS webhook_events (
    provider TEXT NOT NULL,
    event_id TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (provider, event_id)
);
