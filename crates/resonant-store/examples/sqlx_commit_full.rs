//! Minimal reproducer for the sqlx-sqlite 0.8 transaction-depth bug after a failed `COMMIT`
//! (docs/upstream/sqlx-sqlite-commit-failure-depth.md).
//!
//! ```text
//! mkdir -p /tmp/tiny && mount -t tmpfs -o size=1m tmpfs /tmp/tiny
//! cargo run -p resonant-store --example sqlx_commit_full -- /tmp/tiny
//! umount /tmp/tiny
//! ```
//!
//! It commits 20 KB rows through `Connection::begin`/`Transaction::commit` until `COMMIT` fails
//! with SQLITE_FULL, then frees space and goes on committing the same way. It prints, after
//! each step, sqlx's transaction depth and SQLite's own autocommit flag, and at the end how
//! many rows sqlx reported committed against how many a second connection can see.

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode};
use sqlx::{Connection, Executor};

async fn state(conn: &mut SqliteConnection) -> String {
    let autocommit = {
        let mut handle = conn.lock_handle().await.expect("lock handle");
        // SAFETY: the handle is locked; sqlite3_get_autocommit only reads a flag.
        unsafe { libsqlite3_sys::sqlite3_get_autocommit(handle.as_raw_handle().as_ptr()) }
    };
    format!(
        "sqlx in_transaction={} sqlite autocommit={}",
        conn.is_in_transaction(),
        autocommit != 0
    )
}

/// One row through sqlx's transaction API, as an application would write it.
async fn commit_row(conn: &mut SqliteConnection, i: usize) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("INSERT INTO t (i, data) VALUES (?, ?)")
        .bind(i as i64)
        .bind(vec![i as u8; 20 << 10])
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: sqlx_commit_full DIR   (DIR on a ~1 MB filesystem, e.g. a tmpfs)")?;
    let dir = std::path::PathBuf::from(dir);
    let db = dir.join("repro.db");
    let filler = dir.join("filler");
    let _ = std::fs::remove_file(&filler);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let opts = SqliteConnectOptions::new()
        .filename(&db)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let mut conn = SqliteConnection::connect_with(&opts).await?;
    conn.execute("CREATE TABLE t (i INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        .await?;
    // Fill the filesystem, then give back ~300 KB, so the first commits succeed and a later
    // one runs out of space.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler)?;
        let chunk = vec![0u8; 16 << 10];
        while f.write_all(&chunk).is_ok() {}
        let len = f.metadata()?.len();
        f.set_len(len.saturating_sub(300 << 10))?;
    }

    let mut acknowledged = Vec::new();
    let mut failures = 0;
    let mut freed = false;
    for i in 0..200 {
        match commit_row(&mut conn, i).await {
            Ok(()) => acknowledged.push(i),
            Err(e) => {
                failures += 1;
                println!("row {i}: {e}; now {}", state(&mut conn).await);
                if failures >= 3 && !freed {
                    // Space comes back (the operator grows the disk).
                    std::fs::remove_file(&filler).ok();
                    freed = true;
                    println!("freed space");
                }
            }
        }
        if freed && acknowledged.len() > 20 && acknowledged.last() == Some(&i) && i % 10 == 0 {
            println!("row {i} committed (Ok); now {}", state(&mut conn).await);
        }
        if freed && i > 60 + failures {
            break;
        }
    }
    // What another connection (or a restart) sees.
    let mut other = SqliteConnection::connect_with(&opts).await?;
    let visible: Vec<i64> = sqlx::query_scalar("SELECT i FROM t ORDER BY i")
        .fetch_all(&mut other)
        .await?;
    let lost: Vec<usize> = acknowledged
        .iter()
        .copied()
        .filter(|i| !visible.contains(&(*i as i64)))
        .collect();
    println!(
        "commit() returned Ok for {} rows; another connection sees {}; {} acknowledged rows are not durable{}",
        acknowledged.len(),
        visible.len(),
        lost.len(),
        if lost.is_empty() { String::new() } else { format!(" (first {:?})", &lost[..lost.len().min(5)]) }
    );
    println!(
        "final state of the writing connection: {}",
        state(&mut conn).await
    );
    drop(other);
    drop(conn);
    let _ = std::fs::remove_file(&filler);
    Ok(())
}
