//! A store that keeps everything in process memory: nothing survives a restart. For
//! benchmarks (isolating the sync path from disk) and tests; never for real data.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::{Store, StoreError, StoredDoc, WriteOp};

/// In-memory [`Store`]; applies batches exactly as the database backends do.
#[derive(Default)]
pub struct MemoryStore {
    rooms: Mutex<HashMap<String, StoredDoc>>,
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

    async fn write_batch(&self, ops: &[WriteOp]) -> Result<(), StoreError> {
        let mut rooms = self.rooms.lock().unwrap();
        // All or nothing, like a transaction: check every append before applying any. The
        // same bytes at a taken sequence number are a retry of a committed batch (skipped);
        // different bytes are a conflict.
        let mut fresh = std::collections::HashMap::new();
        let mut skip = std::collections::HashSet::new();
        for (i, op) in ops.iter().enumerate() {
            if let WriteOp::Append { room, seq, data } = op {
                let existing = rooms
                    .get(&**room)
                    .and_then(|d| d.updates.iter().find(|(s, _)| s == seq))
                    .map(|(_, d)| &d[..])
                    .or_else(|| fresh.get(&(room.clone(), *seq)).copied());
                match existing {
                    Some(old) if old == &data[..] => {
                        skip.insert(i);
                    }
                    Some(_) => {
                        return Err(StoreError::Conflict {
                            room: room.to_string(),
                            seq: *seq,
                        })
                    }
                    None => {
                        fresh.insert((room.clone(), *seq), &data[..]);
                    }
                }
            }
        }
        for (i, op) in ops.iter().enumerate() {
            match op {
                WriteOp::Append { .. } if skip.contains(&i) => {}
                WriteOp::Append { room, seq, data } => rooms
                    .entry(room.to_string())
                    .or_default()
                    .updates
                    .push((*seq, data.to_vec())),
                WriteOp::Snapshot(s) => {
                    let doc = rooms.entry(s.room.to_string()).or_default();
                    if s.up_to_seq >= doc.snapshot_seq {
                        doc.snapshot = Some(s.state.to_vec());
                        doc.snapshot_seq = s.up_to_seq;
                    }
                    doc.updates.retain(|(seq, _)| *seq > s.up_to_seq);
                }
            }
        }
        Ok(())
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
