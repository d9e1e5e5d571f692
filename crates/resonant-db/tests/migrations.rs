//! Upgrading a database that holds data: each migration that rebuilds or alters a table keeps
//! its rows and the rows that point at them, and a database migrated before the document log's
//! and the application's migrations were split opens with both. SQLite in a temporary file; Postgres at
//! `TEST_DATABASE_URL` in a schema of its own (the test fails, not skips, when it is set and
//! unreachable; it skips, saying so, when it is unset).

use sqlx::migrate::Migrator;

/// The migrations up to and including `version`.
fn up_to(mut m: Migrator, version: i64) -> Migrator {
    m.migrations = m
        .migrations
        .iter()
        .filter(|m| m.version <= version)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    m
}

const SEED: &[&str] = &[
    "INSERT INTO users (id, external_id, tokens_used, tokens_limit, created_at, updated_at) \
     VALUES ('u1', 'ext-1', 0, 1000, 1, 1)",
    "INSERT INTO block_templates (id, created_by, name, description, category, block_type, config, \
     is_public, downloads, created_at, updated_at) \
     VALUES ('t1', 'u1', 'Summariser', 'd', 'writing', 'ai', '{}', TRUE, 1, 1, 1)",
    "INSERT INTO template_downloads (template_id, user_id, downloaded_at) VALUES ('t1', 'u1', 2)",
];

const LOOP_TEMPLATE: &str = "INSERT INTO block_templates (id, created_by, name, description, \
     category, block_type, config, is_public, downloads, created_at, updated_at) \
     VALUES ('t2', 'u1', 'Each', 'd', 'lists', 'loop', '{}', FALSE, 0, 3, 3)";

#[tokio::test]
async fn sqlite_0007_keeps_templates_and_their_downloads_and_takes_every_block_type() {
    let dir = tempfile::tempdir().unwrap();
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("t.db"))
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
    up_to(sqlx::migrate!("./migrations/sqlite"), 6)
        .run(&pool)
        .await
        .unwrap();
    for sql in SEED {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    assert!(
        sqlx::query(LOOP_TEMPLATE).execute(&pool).await.is_err(),
        "before 0007 the CHECK refuses a loop template"
    );

    sqlx::migrate!("./migrations/sqlite")
        .run(&pool)
        .await
        .unwrap();
    let downloads: Vec<(String, String)> =
        sqlx::query_as("SELECT template_id, user_id FROM template_downloads")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(downloads, [("t1".to_string(), "u1".to_string())]);
    let (name, count): (String, i64) =
        sqlx::query_as("SELECT name, downloads FROM block_templates WHERE id = 't1'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((name.as_str(), count), ("Summariser", 1));
    sqlx::query(LOOP_TEMPLATE).execute(&pool).await.unwrap();
    // The downloads still point at the rebuilt table: deleting a template cascades.
    sqlx::query("DELETE FROM block_templates WHERE id = 't1'")
        .execute(&pool)
        .await
        .unwrap();
    let (left,): (i64,) = sqlx::query_as("SELECT count(*) FROM template_downloads")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let problems: Vec<(String,)> = sqlx::query_as("PRAGMA foreign_key_check")
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
    assert!(problems.is_empty());
}

#[tokio::test]
async fn postgres_0007_keeps_templates_and_takes_every_block_type() {
    let Ok(url) = std::env::var("TEST_DATABASE_URL") else {
        eprintln!("TEST_DATABASE_URL is not set: skipping");
        return;
    };
    let schema = format!("migrations_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&url)
        .await
        .expect("TEST_DATABASE_URL is set, so Postgres must be reachable");
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    let scoped = format!(
        "{url}{}options=-c%20search_path%3D{schema}",
        if url.contains('?') { '&' } else { '?' }
    );
    let pool = sqlx::PgPool::connect(&scoped).await.unwrap();
    up_to(sqlx::migrate!("./migrations/postgres"), 6)
        .run(&pool)
        .await
        .unwrap();
    for sql in SEED {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    assert!(sqlx::query(LOOP_TEMPLATE).execute(&pool).await.is_err());
    sqlx::migrate!("./migrations/postgres")
        .run(&pool)
        .await
        .unwrap();
    sqlx::query(LOOP_TEMPLATE).execute(&pool).await.unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM template_downloads")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
    pool.close().await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_database_migrated_as_one_history_opens_with_the_split_migrators() {
    let dir = tempfile::tempdir().unwrap();
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("t.db"))
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
    // Before the split, resonant-store ran 0001–0007 as one migrator.
    let mut before = sqlx::migrate!("../resonant-store/migrations/sqlite");
    let app = sqlx::migrate!("./migrations/sqlite");
    // The old history: the store's 0001–0002 and the application's 0003–0007 (what came
    // after the split, the store's 0100 included, runs on top below).
    let mut all: Vec<_> = before
        .migrations
        .iter()
        .filter(|m| m.version <= 2)
        .cloned()
        .collect();
    all.extend(app.migrations.iter().filter(|m| m.version <= 7).cloned());
    before.migrations = all.into();
    before.run(&pool).await.unwrap();
    for sql in SEED {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    let applied = |pool: sqlx::SqlitePool| async move {
        sqlx::query_as::<_, (i64,)>("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .map(|(v,)| v)
            .collect::<Vec<_>>()
    };
    let history = applied(pool.clone()).await;
    assert_eq!(history, [1, 2, 3, 4, 5, 6, 7]);

    // Now: the store's migrator (0001–0002), then the application's (0003 onwards).
    let mut store = sqlx::migrate!("../resonant-store/migrations/sqlite");
    store.set_ignore_missing(true);
    store.run(&pool).await.unwrap();
    resonant_db::migrate(&resonant_db::Db::Sqlite(pool.clone()))
        .await
        .unwrap();
    assert_eq!(
        applied(pool.clone()).await,
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 100],
        "nothing ran twice, and what came after the split ran once"
    );
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM template_downloads")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);

    // And a fresh database gets both halves, in order.
    let fresh = resonant_db::memory().await.unwrap();
    let resonant_db::Db::Sqlite(fresh) = fresh else {
        unreachable!()
    };
    assert_eq!(applied(fresh).await, [3, 4, 5, 6, 7, 8, 9, 10]);
}
