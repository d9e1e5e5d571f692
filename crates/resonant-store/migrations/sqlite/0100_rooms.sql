-- One row per room: the highest seq its log has used. Writers take the next seqs from it in
-- the transaction that inserts the rows (under its row lock on Postgres), so every room's seqs
-- are gapless and commit in order whichever process wrote them; an aborted writer's bump
-- aborts with it.
CREATE TABLE IF NOT EXISTS rooms (
    room TEXT PRIMARY KEY NOT NULL,
    head_seq BIGINT NOT NULL DEFAULT 0,
    -- The workflow was deleted (ms): reserved for the tombstone of scale-out.
    deleted_at BIGINT
);

INSERT OR IGNORE INTO rooms (room, head_seq)
SELECT room, MAX(seq) FROM (
    SELECT room, seq FROM doc_updates
    UNION ALL SELECT room, up_to_seq FROM doc_snapshots
) GROUP BY room;
