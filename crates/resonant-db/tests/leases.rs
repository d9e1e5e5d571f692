//! The execution lease statements (issue 18, docs/scale-out.md §7) against the real Postgres
//! at `TEST_DATABASE_URL`, in a schema of their own (the tests fail, not skip, when it is set
//! and unreachable; they skip, saying so, when it is unset).

use std::collections::HashMap;
use std::time::Duration;

use resonant_db::executions::{self as store, Fence, NewExecution, Write};
use resonant_db::leases::{self, NewLease};
use resonant_db::Db;

const TTL: Duration = Duration::from_secs(30);

struct Schema {
    admin: sqlx::PgPool,
    name: String,
    db: Db,
    workflow: resonant_db::Workflow,
    user: String,
}

impl Schema {
    async fn new(name: &str) -> Option<Schema> {
        let Ok(url) = std::env::var("TEST_DATABASE_URL") else {
            eprintln!("TEST_DATABASE_URL is not set: skipping");
            return None;
        };
        let name = format!("lease_sql_{name}_{}", std::process::id());
        let admin = sqlx::PgPool::connect(&url)
            .await
            .expect("TEST_DATABASE_URL is set, so Postgres must be reachable");
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
            .execute(&admin)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&admin)
            .await
            .unwrap();
        let scoped = format!(
            "{url}{}options=-c%20search_path%3D{name}",
            if url.contains('?') { '&' } else { '?' }
        );
        let db = Db::Postgres(sqlx::PgPool::connect(&scoped).await.unwrap());
        resonant_db::migrate(&db).await.unwrap();
        let profile = resonant_db::UserProfile {
            email: None,
            name: None,
            image_url: None,
        };
        let user = resonant_db::upsert_user(&db, "ext", &profile, 1000, false)
            .await
            .unwrap();
        let ws = resonant_db::create_workspace(&db, &user.id, "w", &name.replace('_', "-"))
            .await
            .unwrap();
        let workflow = resonant_db::create_workflow(&db, &ws.id, &user.id, "f", None)
            .await
            .unwrap();
        Some(Schema {
            admin,
            name,
            db,
            workflow,
            user: user.id,
        })
    }

    /// A new pending execution, leased to `owner` when given.
    async fn execution(&self, owner: Option<&str>) -> String {
        let id = resonant_db::new_id();
        store::insert(
            &self.db,
            &NewExecution {
                id: &id,
                workflow_id: &self.workflow.id,
                workspace_id: &self.workflow.workspace_id,
                user_id: &self.user,
                input: "{}",
                options: "{}",
                graph: "{}",
                state_vector: &[],
                idempotency_key: None,
                rerun_of: None,
                trigger_id: None,
                version_id: None,
                lease: owner.map(|owner| NewLease { owner, ttl: TTL }),
                caps: None,
            },
        )
        .await
        .unwrap()
        .unwrap();
        id
    }

    /// Makes every lease expired, as if its owner had stopped renewing long ago.
    async fn expire_all(&self) {
        let Db::Postgres(p) = &self.db else {
            unreachable!()
        };
        sqlx::query("UPDATE execution_leases SET expires_at = expires_at - 3600000")
            .execute(p)
            .await
            .unwrap();
    }

    async fn drop(self) {
        if let Db::Postgres(p) = &self.db {
            p.close().await;
        }
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
            .execute(&self.admin)
            .await;
    }
}

fn event(execution: &str, seq: i64) -> Write {
    Write::Event {
        execution: execution.to_owned(),
        seq,
        json: format!("{{\"seq\":{seq}}}"),
    }
}

#[tokio::test]
async fn a_live_lease_is_renewed_and_never_claimed_an_expired_one_is_taken_with_the_next_epoch() {
    let Some(s) = Schema::new("cycle").await else {
        return;
    };
    let x = s.execution(Some("a")).await;
    // Unleased (written before leases existed): any node may take it.
    let old = s.execution(None).await;
    let taken = leases::claim_expired(&s.db, "b", &[], 10, TTL)
        .await
        .unwrap();
    assert_eq!(taken, vec![(old.clone(), 1)]);
    let owner = leases::owner_of(&s.db, &x).await.unwrap().unwrap();
    assert_eq!(
        owner,
        leases::Owner {
            owner: "a".into(),
            epoch: 1,
            live: true
        }
    );
    let renewed = leases::renew(&s.db, "a", std::slice::from_ref(&x), TTL)
        .await
        .unwrap();
    assert_eq!(
        renewed,
        vec![leases::Renewed {
            execution: x.clone(),
            epoch: 1,
            cancel_requested: false
        }]
    );
    // Another node renewing what it does not hold gets nothing.
    assert!(leases::renew(&s.db, "b", std::slice::from_ref(&x), TTL)
        .await
        .unwrap()
        .is_empty());

    s.expire_all().await;
    // What the sweeper already runs is left out.
    let none = leases::claim_expired(&s.db, "b", &[x.clone(), old.clone()], 10, TTL)
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
    let taken = leases::claim_expired(&s.db, "b", std::slice::from_ref(&old), 10, TTL)
        .await
        .unwrap();
    assert_eq!(taken, vec![(x.clone(), 2)]);
    // The old owner's renewal now says it lost it.
    assert!(leases::renew(&s.db, "a", std::slice::from_ref(&x), TTL)
        .await
        .unwrap()
        .is_empty());
    // Cancel requested from anywhere shows in the owner's renewal.
    assert!(leases::request_cancel(&s.db, &x).await.unwrap());
    let renewed = leases::renew(&s.db, "b", std::slice::from_ref(&x), TTL)
        .await
        .unwrap();
    assert!(renewed[0].cancel_requested && renewed[0].epoch == 2);
    // A finished execution is neither cancellable nor claimable, however old its lease.
    store::finish(&s.db, &x, "cancelled", None).await.unwrap();
    assert!(!leases::request_cancel(&s.db, &x).await.unwrap());
    s.expire_all().await;
    let taken = leases::claim_expired(&s.db, "c", &[], 10, TTL)
        .await
        .unwrap();
    assert_eq!(taken, vec![(old.clone(), 2)], "only the unfinished one");
    // A release lets the lease lapse now.
    assert_eq!(
        leases::release(&s.db, "c", std::slice::from_ref(&old))
            .await
            .unwrap(),
        1
    );
    assert!(!leases::owner_of(&s.db, &old).await.unwrap().unwrap().live);
    let taken = leases::claim_expired(&s.db, "d", &[], 10, TTL)
        .await
        .unwrap();
    assert_eq!(taken, vec![(old, 3)]);
    s.drop().await;
}

#[tokio::test]
async fn two_sweepers_at_once_take_disjoint_sets() {
    let Some(s) = Schema::new("race").await else {
        return;
    };
    let mut all = Vec::new();
    for _ in 0..40 {
        all.push(s.execution(Some("dead")).await);
    }
    s.expire_all().await;
    for _ in 0..5 {
        let (one, two) = tokio::join!(
            leases::claim_expired(&s.db, "b", &[], 40, TTL),
            leases::claim_expired(&s.db, "c", &[], 40, TTL)
        );
        let (one, two) = (one.unwrap(), two.unwrap());
        let mut ids: Vec<&String> = one.iter().chain(&two).map(|(id, _)| id).collect();
        ids.sort();
        let before = ids.len();
        ids.dedup();
        assert_eq!(before, ids.len(), "an execution was taken twice");
        assert_eq!(ids.len(), 40, "some expired execution was left");
        s.expire_all().await;
    }
    s.drop().await;
}

#[tokio::test]
async fn the_event_writer_is_fenced_by_the_lease_epoch() {
    let Some(s) = Schema::new("fence").await else {
        return;
    };
    let x = s.execution(Some("a")).await;
    let y = s.execution(Some("a")).await;
    let a1: HashMap<String, i64> = [(x.clone(), 1), (y.clone(), 1)].into();
    let fence = Fence {
        owner: "a",
        epochs: &a1,
    };
    let kept = store::apply_fenced(&s.db, &[event(&x, 1), event(&y, 1)], Some(fence))
        .await
        .unwrap();
    assert_eq!(kept, [true, true]);
    s.expire_all().await;
    let taken = leases::claim_expired(&s.db, "b", &[], 10, TTL)
        .await
        .unwrap();
    assert_eq!(taken.len(), 2);
    // Node a, paused past its lease, wakes up and writes: refused, for both executions.
    let kept = store::apply_fenced(
        &s.db,
        &[event(&x, 2), event(&y, 2), event(&x, 3)],
        Some(fence),
    )
    .await
    .unwrap();
    assert_eq!(kept, [false, false, false]);
    // The new owner, at the new epoch, continues from the stored seq; a stale epoch of the
    // right owner is refused too.
    let b2: HashMap<String, i64> = [(x.clone(), 2)].into();
    let stale: HashMap<String, i64> = [(y.clone(), 1)].into();
    let kept = store::apply_fenced(
        &s.db,
        &[event(&x, 2)],
        Some(Fence {
            owner: "b",
            epochs: &b2,
        }),
    )
    .await
    .unwrap();
    assert_eq!(kept, [true]);
    let kept = store::apply_fenced(
        &s.db,
        &[event(&y, 2)],
        Some(Fence {
            owner: "b",
            epochs: &stale,
        }),
    )
    .await
    .unwrap();
    assert_eq!(kept, [false]);
    assert_eq!(store::last_seq(&s.db, &x).await.unwrap(), 2);
    assert_eq!(store::last_seq(&s.db, &y).await.unwrap(), 1);
    let (n,): (i64,) = match &s.db {
        Db::Postgres(p) => sqlx::query_as("SELECT count(*) FROM execution_events")
            .fetch_one(p)
            .await
            .unwrap(),
        Db::Sqlite(_) => unreachable!(),
    };
    assert_eq!(n, 3, "exactly the kept events are stored");
    s.drop().await;
}

#[tokio::test]
async fn decisions_stored_on_waiting_blocks_are_found_for_their_owner() {
    let Some(s) = Schema::new("decisions").await else {
        return;
    };
    let x = s.execution(Some("a")).await;
    let row = |block: &str, status: &str| resonant_db::executions::BlockRow {
        execution_id: x.clone(),
        block_id: block.into(),
        status: status.into(),
        attempt: 1,
        output: None,
        error: None,
        provider: None,
        model: None,
        tokens_used: 0,
        cost_usd: 0.0,
        wake_at: Some(1),
        decision: None,
        started_at: 1,
        completed_at: None,
    };
    store::apply(
        &s.db,
        &[
            Write::Block(row("gate", "waiting")),
            Write::Block(row("other", "waiting")),
            Write::Block(row("done", "completed")),
        ],
    )
    .await
    .unwrap();
    assert!(
        store::set_decision(&s.db, &x, "gate", "{\"approved\":true}")
            .await
            .unwrap()
    );
    assert!(!store::set_decision(&s.db, &x, "gate", "{}").await.unwrap());
    assert!(!store::set_decision(&s.db, &x, "done", "{}").await.unwrap());
    let found = leases::pending_decisions(&s.db, std::slice::from_ref(&x))
        .await
        .unwrap();
    assert_eq!(
        found,
        vec![leases::StoredDecision {
            execution: x.clone(),
            block: "gate".into(),
            decision: "{\"approved\":true}".into()
        }]
    );
    // An execution that ended takes no decision (its waiting rows stay as they were).
    store::finish(&s.db, &x, "cancelled", None).await.unwrap();
    assert!(!store::set_decision(&s.db, &x, "other", "{}").await.unwrap());
    s.drop().await;
}

#[tokio::test]
async fn sqlite_takes_the_lease_with_the_execution_and_refuses_the_cluster_statements() {
    let db = resonant_db::memory().await.unwrap();
    let profile = resonant_db::UserProfile {
        email: None,
        name: None,
        image_url: None,
    };
    let user = resonant_db::upsert_user(&db, "ext", &profile, 1000, false)
        .await
        .unwrap();
    let ws = resonant_db::create_workspace(&db, &user.id, "w", "w")
        .await
        .unwrap();
    let wf = resonant_db::create_workflow(&db, &ws.id, &user.id, "f", None)
        .await
        .unwrap();
    let id = resonant_db::new_id();
    store::insert(
        &db,
        &NewExecution {
            id: &id,
            workflow_id: &wf.id,
            workspace_id: &ws.id,
            user_id: &user.id,
            input: "{}",
            options: "{}",
            graph: "{}",
            state_vector: &[],
            idempotency_key: None,
            rerun_of: None,
            trigger_id: None,
            version_id: None,
            lease: Some(NewLease {
                owner: "solo",
                ttl: TTL,
            }),
            caps: None,
        },
    )
    .await
    .unwrap()
    .unwrap();
    let Db::Sqlite(p) = &db else { unreachable!() };
    let (owner, epoch, expires): (String, i64, i64) =
        sqlx::query_as("SELECT owner, epoch, expires_at FROM execution_leases")
            .fetch_one(p)
            .await
            .unwrap();
    let now = resonant_db::now_ms();
    assert_eq!((owner.as_str(), epoch), ("solo", 1));
    assert!(
        (expires - now - TTL.as_millis() as i64).abs() < 5_000,
        "expires_at {expires} is not now + ttl ({now})"
    );
    assert!(leases::request_cancel(&db, &id).await.unwrap());
    assert!(leases::renew(&db, "solo", std::slice::from_ref(&id), TTL)
        .await
        .is_err());
}
