//! The production backend: Postgres, shared by every node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Row};

use crate::{now_millis, Store, StoreError, StoredDoc, WriteOp};

/// Postgres-backed [`Store`].
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// The connection holding the process's advisory lock (see `lock_exclusive`); the lock
    /// lives exactly as long as this session.
    lock: Arc<tokio::sync::Mutex<Option<PgConnection>>>,
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
        Ok(PostgresStore {
            pool,
            lock: Arc::default(),
        })
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
                        "INSERT INTO doc_snapshots (room, state, up_to_seq, updated_at)
                         VALUES ($1, $2, $3, $4)
                         ON CONFLICT (room) DO UPDATE SET state = excluded.state,
                           up_to_seq = excluded.up_to_seq,
                           updated_at = excluded.updated_at
                         WHERE excluded.up_to_seq >= doc_snapshots.up_to_seq",
                    )
                    .bind(&*s.room)
                    .bind(&s.state[..])
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

    async fn lock_exclusive(&self, wait: Duration) -> Result<(), StoreError> {
        let mut held = self.lock.lock().await;
        if held.is_some() {
            return Ok(());
        }
        let mut conn = PgConnection::connect_with(&self.pool.connect_options()).await?;
        // Keyed by schema, so separate schemas (separate deployments, parallel tests) in one
        // database do not exclude each other.
        let started = Instant::now();
        loop {
            let (got, schema): (bool, String) = sqlx::query_as(
                "SELECT pg_try_advisory_lock(hashtextextended('resonant-server:' || current_schema(), 0)),
                        current_database() || '.' || current_schema()",
            )
            .fetch_one(&mut conn)
            .await?;
            if got {
                *held = Some(conn);
                return Ok(());
            }
            if started.elapsed() >= wait {
                return Err(StoreError::Locked(format!("Postgres schema {schema}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn db(&self) -> Option<crate::Db> {
        Some(crate::Db::Postgres(self.pool.clone()))
    }

    async fn delete_room(&self, room: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM doc_updates WHERE room = $1")
            .bind(room)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM doc_snapshots WHERE room = $1")
            .bind(room)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
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
    // A retried batch that did commit meets its own rows: skip them here and check below
    // that they hold the same bytes.
    let inserted = sqlx::query(
        "INSERT INTO doc_updates (room, seq, data, created_at)
         SELECT r, s, d, $4 FROM UNNEST($1::text[], $2::bigint[], $3::bytea[]) AS t(r, s, d)
         ON CONFLICT (room, seq) DO NOTHING",
    )
    .bind(&rooms[..])
    .bind(&seqs[..])
    .bind(&datas[..])
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted < rooms.len() as u64 {
        let conflict: Option<(String, i64)> = sqlx::query_as(
            "SELECT t.r, t.s FROM UNNEST($1::text[], $2::bigint[], $3::bytea[]) AS t(r, s, d)
             JOIN doc_updates u ON u.room = t.r AND u.seq = t.s
             WHERE u.data <> t.d LIMIT 1",
        )
        .bind(&rooms[..])
        .bind(&seqs[..])
        .bind(&datas[..])
        .fetch_optional(&mut **tx)
        .await?;
        if let Some((room, seq)) = conflict {
            return Err(StoreError::Conflict { room, seq });
        }
    }
    rooms.clear();
    seqs.clear();
    datas.clear();
    Ok(())
}
