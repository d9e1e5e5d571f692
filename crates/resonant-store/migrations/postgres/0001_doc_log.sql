-- The CRDT documents: an append-only update log per room, compacted into snapshots.
CREATE TABLE IF NOT EXISTS doc_updates (
    room TEXT NOT NULL,
    seq BIGINT NOT NULL,
    data BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (room, seq)
);

CREATE TABLE IF NOT EXISTS doc_snapshots (
    room TEXT PRIMARY KEY NOT NULL,
    state BYTEA NOT NULL,
    state_vector BYTEA NOT NULL,
    up_to_seq BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
