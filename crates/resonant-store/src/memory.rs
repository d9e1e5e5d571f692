//! A store that keeps everything in process memory: nothing survives a restart. For
//! benchmarks (isolating the sync path from disk) and tests; never for real data.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::{BatchId, LastCommit, Store, StoreError, StoredDoc, WriteOp};

/// In-memory [`Store`]; applies batches exactly as the database backends do.
#[derive(Default)]
pub struct MemoryStore {
    rooms: Mutex<HashMap<String, StoredDoc>>,
    last: LastCommit,
}

#[async_trait]
impl Store for MemoryStore {
    async fn load(&self, room: &str) -> Result<StoredDoc, StoreError> {
        Ok(self
            .rooms
            .lock()
            .unwrap()
            .get(room)
            .cloned()
            .unwrap_or_default())
    }

    async fn write_batch(
        &self,
        batch: BatchId,
        ops: &[WriteOp],
    ) -> Result<Vec<Option<i64>>, StoreError> {
        if let Some(seqs) = self.last.get(batch) {
            return Ok(seqs);
        }
        // Nothing here can fail half-way, so applying op by op is all or nothing.
        let mut rooms = self.rooms.lock().unwrap();
        let mut seqs = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                WriteOp::Append { room, data } => {
                    let doc = rooms.entry(room.to_string()).or_default();
                    doc.head_seq += 1;
                    doc.updates.push((doc.head_seq, data.to_vec()));
                    seqs.push(Some(doc.head_seq));
                }
                WriteOp::Snapshot(s) => {
                    let doc = rooms.entry(s.room.to_string()).or_default();
                    let up_to = s.up_to_seq.unwrap_or(doc.head_seq);
                    if up_to >= doc.snapshot_seq {
                        doc.snapshot = Some(s.state.to_vec());
                        doc.snapshot_seq = up_to;
                        doc.updates.retain(|(seq, _)| *seq > up_to);
                    }
                    seqs.push(None);
                }
            }
        }
        self.last.set(batch, &seqs);
        Ok(seqs)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn delete_room(&self, room: &str) -> Result<(), StoreError> {
        self.rooms.lock().unwrap().remove(room);
        Ok(())
    }
}
