-- The CRDT documents: an append-only update log per room, compacted into snapshots.
CREATE TABLE IF NOT EXISTS doc_updates (
    room TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS doc_snapshots (
    room TEXT PRIMARY KEY NOT NULL,
    state BLOB NOT NULL,
    state_vector BLOB NOT NULL,
    up_to_seq INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
