-- Issue 18: several nodes share one database. A node runs an execution only while it holds
-- its lease; a lease that lapses (its node died or lost the database) is taken over by
-- another node, whose `epoch` is one higher, so writes of the old owner can be told apart
-- and refused (docs/scale-out.md §7). Times are ms by the DATABASE's clock, so the nodes'
-- clocks never have to agree. Single-node servers never read this table.
CREATE TABLE IF NOT EXISTS execution_leases (
    execution_id TEXT PRIMARY KEY REFERENCES executions (id) ON DELETE CASCADE,
    owner TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS execution_leases_by_owner ON execution_leases (owner);

-- A cancel asked on a node that does not run the execution: its owner's lease renewal reads
-- the flag and cancels it there.
ALTER TABLE executions ADD COLUMN cancel_requested_at BIGINT;
