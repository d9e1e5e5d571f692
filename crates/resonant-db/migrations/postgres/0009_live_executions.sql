-- Issue 18: running caps are counted in the database when several nodes start executions
-- (each node's own count cannot see the others'); these keep the count to the live rows.
CREATE INDEX IF NOT EXISTS executions_live_by_user ON executions (user_id)
    WHERE status IN ('pending', 'running');
CREATE INDEX IF NOT EXISTS executions_live_by_workspace ON executions (workspace_id)
    WHERE status IN ('pending', 'running');
