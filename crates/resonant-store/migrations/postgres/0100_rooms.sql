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

INSERT INTO rooms (room, head_seq)
SELECT room, MAX(seq) FROM (
    SELECT room, seq FROM doc_updates
    UNION ALL SELECT room, up_to_seq FROM doc_snapshots
) AS s GROUP BY room
ON CONFLICT (room) DO NOTHING;

-- Appends a batch's updates (rooms and bytes in op order) in one round trip: returns, per
-- room, the first seq its updates got and how many; the k-th update of a room in the batch
-- has first + k - 1. Row locks are taken in room-name order, so two writers sharing rooms
-- queue and never deadlock; NO KEY UPDATE, so a reader's KEY SHARE does not block appends.
-- Rooms marked deleted get no rows and are missing from the result.
CREATE OR REPLACE FUNCTION resonant_append(p_rooms TEXT[], p_data BYTEA[], p_now BIGINT)
RETURNS TABLE (out_room TEXT, out_first BIGINT, out_count BIGINT)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rooms (room)
    SELECT DISTINCT r FROM unnest(p_rooms) AS r ORDER BY r
    ON CONFLICT (room) DO NOTHING;
    PERFORM 1 FROM rooms WHERE room = ANY (p_rooms) ORDER BY room FOR NO KEY UPDATE;
    RETURN QUERY
    WITH ops AS (
        SELECT t.r, t.d, row_number() OVER (PARTITION BY t.r ORDER BY t.i) AS k
        FROM unnest(p_rooms, p_data) WITH ORDINALITY AS t (r, d, i)
    ), counts AS (
        SELECT ops.r, count(*) AS n FROM ops GROUP BY ops.r
    ), bumped AS (
        UPDATE rooms SET head_seq = rooms.head_seq + counts.n
        FROM counts
        WHERE rooms.room = counts.r AND rooms.deleted_at IS NULL
        RETURNING rooms.room AS r, rooms.head_seq - counts.n AS base, counts.n AS n
    ), ins AS (
        INSERT INTO doc_updates (room, seq, data, created_at)
        SELECT ops.r, bumped.base + ops.k, ops.d, p_now
        FROM ops JOIN bumped ON bumped.r = ops.r
    )
    SELECT bumped.r, bumped.base + 1, bumped.n FROM bumped;
END $$;
