//! The production backend: Postgres, shared by every node.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row;

use crate::{now_millis, Store, StoreError, StoredDoc, WriteOp};

/// Postgres-backed [`Store`].
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `url` and applies migrations (serialised across nodes by sqlx's advisory
    /// lock).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(PostgresStore { pool })
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn load(&self, room: &str) -> Result<StoredDoc, StoreError> {
        let mut tx = self.pool.begin().await?;
        // One snapshot of the database for both reads, so a compaction committing between
        // them cannot hide updates.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        let snap = sqlx::query("SELECT state, up_to_seq FROM doc_snapshots WHERE room = $1")
            .bind(room)
            .fetch_optional(&mut *tx)
            .await?;
        let (snapshot, snapshot_seq) = match snap {
            Some(row) => (
                Some(row.try_get::<Vec<u8>, _>(0)?),
                row.try_get::<i64, _>(1)?,
            ),
            None => (None, 0),
        };
        let rows = sqlx::query(
            "SELECT seq, data FROM doc_updates WHERE room = $1 AND seq > $2 ORDER BY seq",
        )
        .bind(room)
        .bind(snapshot_seq)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let updates = rows
            .into_iter()
            .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<Vec<u8>, _>(1)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(StoredDoc {
            snapshot,
            snapshot_seq,
            updates,
        })
    }

    async fn write_batch(&self, ops: &[WriteOp]) -> Result<(), StoreError> {
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        // Consecutive appends go in as one multi-row insert (UNNEST); snapshots break the run
        // so that ops keep their order.
        let mut rooms: Vec<&str> = Vec::new();
        let mut seqs: Vec<i64> = Vec::new();
        let mut datas: Vec<&[u8]> = Vec::new();
        for op in ops {
            match op {
                WriteOp::Append { room, seq, data } => {
                    rooms.push(room);
                    seqs.push(*seq);
                    datas.push(data);
                }
                WriteOp::Snapshot(s) => {
                    insert_appends(&mut tx, &mut rooms, &mut seqs, &mut datas, now).await?;
                    sqlx::query(
                        "INSERT INTO doc_snapshots (room, state, state_vector, up_to_seq, updated_at)
                         VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (room) DO UPDATE SET state = excluded.state,
                           state_vector = excluded.state_vector, up_to_seq = excluded.up_to_seq,
                           updated_at = excluded.updated_at
                         WHERE excluded.up_to_seq >= doc_snapshots.up_to_seq",
                    )
                    .bind(&*s.room)
                    .bind(&s.state[..])
                    .bind(&s.state_vector[..])
                    .bind(s.up_to_seq)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("DELETE FROM doc_updates WHERE room = $1 AND seq <= $2")
                        .bind(&*s.room)
                        .bind(s.up_to_seq)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        insert_appends(&mut tx, &mut rooms, &mut seqs, &mut datas, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}

async fn insert_appends(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    rooms: &mut Vec<&str>,
    seqs: &mut Vec<i64>,
    datas: &mut Vec<&[u8]>,
    now: i64,
) -> Result<(), StoreError> {
    if rooms.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO doc_updates (room, seq, data, created_at)
         SELECT r, s, d, $4 FROM UNNEST($1::text[], $2::bigint[], $3::bytea[]) AS t(r, s, d)",
    )
    .bind(&rooms[..])
    .bind(&seqs[..])
    .bind(&datas[..])
    .bind(now)
    .execute(&mut **tx)
    .await?;
    rooms.clear();
    seqs.clear();
    datas.clear();
    Ok(())
}
