-- Nothing reads a snapshot's state vector (it is derivable from the state), so stop storing it.
ALTER TABLE doc_snapshots DROP COLUMN state_vector;
