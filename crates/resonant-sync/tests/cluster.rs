//! Issue 18, in process: several registries ("nodes") serve the same rooms over one store
//! and one in-memory bus whose faults are switched on at will. Whatever the bus loses,
//! repeats, reorders or stops carrying, every editor on every node ends with the same
//! document, and the store replays into it. Runs over the memory store and, when
//! `TEST_DATABASE_URL` is set, over Postgres (a schema of its own; failing when unreachable).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use resonant_bus::{Bus, MemoryHub};
use resonant_client::ClientState;
use resonant_store::{Journal, JournalConfig, MemoryStore, PostgresStore, Store};
use resonant_sync::{ClusterConfig, Outbox, Rooms, Session, SyncConfig};
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, Text, Transact, Update, WriteTxn};

/// One node: its own journal and registry over the shared store and bus hub.
struct Node {
    rooms: Rooms,
    journal: Journal,
}

fn node(store: &Arc<dyn Store>, hub: &MemoryHub, id: u64, config: SyncConfig) -> Node {
    let (journal, _task) = Journal::start(store.clone(), JournalConfig::default());
    let bus: Arc<dyn Bus> = hub.node(id);
    let mut cluster = ClusterConfig::new(bus);
    // Short bounds so a lost message is healed within a test's patience.
    cluster.gap_heal = Duration::from_millis(50);
    cluster.probe = Duration::from_millis(200);
    cluster.probe_when_down = Duration::from_millis(100);
    let rooms = Rooms::clustered(store.clone(), journal.clone(), config, cluster);
    Node { rooms, journal }
}

/// An editor without a socket, as in the convergence property test.
struct Editor {
    client: ClientState,
    session: Session,
    outbox: Outbox,
}

impl Editor {
    async fn join(rooms: &Rooms, room: &str) -> Editor {
        let (mut session, outbox) = rooms.join(room, true).await.expect("join");
        let mut client = ClientState::new();
        let hello = client.start_sync();
        session.handle(&hello).expect("step 1");
        let mut e = Editor {
            client,
            session,
            outbox,
        };
        e.pump();
        e
    }

    /// Delivers everything the server queued, and the client's replies.
    fn pump(&mut self) {
        while let Some(msg) = self.outbox.try_recv(self.session.peer()) {
            let handled = self.client.handle(&msg).expect("client accepts");
            if let Some(reply) = handled.reply {
                self.session.handle(&reply).expect("server accepts");
            }
        }
    }

    fn type_text(&mut self, s: &str) {
        let frame = self.client.edit(|_, txn| {
            let text = txn.get_or_insert_text("text");
            let len = text.len(txn);
            text.insert(txn, len, s);
        });
        if let Some(f) = frame {
            self.session.handle(&f).expect("server accepts the edit");
        }
    }

    fn text(&self) -> String {
        text_of(&self.client.doc)
    }
}

fn text_of(doc: &Doc) -> String {
    let txn = doc.transact();
    txn.get_text("text")
        .map(|t| t.get_string(&txn))
        .unwrap_or_default()
}

/// The document the store replays for `room` (snapshot, then the log).
async fn replayed(store: &dyn Store, room: &str) -> String {
    let stored = store.load(room).await.unwrap();
    let doc = Doc::new();
    {
        let mut txn = doc.transact_mut();
        for part in stored
            .snapshot
            .iter()
            .chain(stored.updates.iter().map(|(_, u)| u))
        {
            txn.apply_update(Update::decode_v1(part).unwrap()).unwrap();
        }
    }
    text_of(&doc)
}

/// Pumps every editor until `done` holds, failing after `within`.
async fn until(
    editors: &mut [Editor],
    within: Duration,
    what: &str,
    done: impl Fn(&[Editor]) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        for e in editors.iter_mut() {
            e.pump();
        }
        if done(editors) {
            return;
        }
        let texts: Vec<usize> = editors.iter().map(|e| e.text().len()).collect();
        assert!(
            Instant::now() < deadline,
            "{what}: not converged within {within:?}; lengths {texts:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn stores() -> Vec<(&'static str, Arc<dyn Store>)> {
    let mut all: Vec<(&'static str, Arc<dyn Store>)> =
        vec![("memory", Arc::new(MemoryStore::default()))];
    if let Ok(url) = std::env::var("TEST_DATABASE_URL") {
        if !url.is_empty() {
            let schema = format!(
                "cluster_sync_{}_{}",
                std::process::id(),
                rand::random::<u32>()
            );
            let pool = sqlx::PgPool::connect(&url)
                .await
                .expect("TEST_DATABASE_URL is set, so Postgres must be reachable");
            sqlx::query(&format!("CREATE SCHEMA {schema}"))
                .execute(&pool)
                .await
                .unwrap();
            let scoped = format!(
                "{url}{}options=-c%20search_path%3D{schema}",
                if url.contains('?') { '&' } else { '?' }
            );
            all.push((
                "postgres",
                Arc::new(PostgresStore::connect(&scoped).await.unwrap()),
            ));
        }
    } else {
        eprintln!("TEST_DATABASE_URL is not set: the Postgres variant is skipped");
    }
    all
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    DropEveryOther,
    DuplicateEveryOther,
    Reorder,
    Down,
    Stalled,
}

impl Fault {
    fn apply(self, hub: &MemoryHub) {
        match self {
            Fault::None => {}
            Fault::DropEveryOther => hub.drop_every(2),
            Fault::DuplicateEveryOther => hub.duplicate_every(2),
            Fault::Reorder => hub.set_reorder(true),
            Fault::Down => hub.set_up(false),
            Fault::Stalled => hub.stall(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editors_on_three_nodes_converge_whatever_the_bus_does() {
    for (backend, store) in stores().await {
        for fault in [
            Fault::None,
            Fault::DropEveryOther,
            Fault::DuplicateEveryOther,
            Fault::Reorder,
            Fault::Down,
            Fault::Stalled,
        ] {
            let hub = MemoryHub::new();
            let nodes: Vec<Node> = (1..=3)
                .map(|id| node(&store, &hub, id, SyncConfig::default()))
                .collect();
            let room = format!("conv-{}-{fault:?}", rand::random::<u32>());
            let mut editors = Vec::new();
            for n in &nodes {
                editors.push(Editor::join(&n.rooms, &room).await);
            }
            fault.apply(&hub);
            for round in 0..10 {
                for (i, e) in editors.iter_mut().enumerate() {
                    e.type_text(&format!("{i}{}", round % 10));
                }
                for e in editors.iter_mut() {
                    e.pump();
                }
            }
            let what = format!("{backend}, {fault:?}");
            until(&mut editors, Duration::from_secs(10), &what, |es| {
                let first = es[0].text();
                first.len() == 60 && es.iter().all(|e| e.text() == first)
            })
            .await;
            for n in &nodes {
                n.journal.flush().await;
            }
            assert_eq!(
                replayed(&*store, &room).await,
                editors[0].text(),
                "{what}: the store replays into what the editors have"
            );
            hub.resume();
            hub.set_up(true);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_on_several_nodes_keeps_the_log_replayable() {
    for (backend, store) in stores().await {
        let hub = MemoryHub::new();
        hub.set_reorder(true);
        let config = || SyncConfig {
            compact_after_updates: 5,
            ..SyncConfig::default()
        };
        let nodes: Vec<Node> = (1..=2).map(|id| node(&store, &hub, id, config())).collect();
        let room = format!("compact-{}", rand::random::<u32>());
        let mut editors = Vec::new();
        for n in &nodes {
            editors.push(Editor::join(&n.rooms, &room).await);
        }
        for round in 0..40 {
            let e = &mut editors[round % 2];
            e.type_text(&format!("{}", round % 10));
            if round % 3 == 0 {
                // Commits land meanwhile, as they do under real typing: W moves, and the
                // snapshots cover more than nothing.
                for n in &nodes {
                    n.journal.flush().await;
                }
                for e in editors.iter_mut() {
                    e.pump();
                }
            }
        }
        until(&mut editors, Duration::from_secs(10), backend, |es| {
            es[0].text().len() == 40 && es[0].text() == es[1].text()
        })
        .await;
        for n in &nodes {
            n.journal.flush().await;
        }
        let stored = store.load(&room).await.unwrap();
        assert!(stored.snapshot_seq > 0, "{backend}: the room was compacted");
        assert_eq!(
            replayed(&*store, &room).await,
            editors[0].text(),
            "{backend}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_while_another_writes_misses_nothing() {
    for (backend, store) in stores().await {
        let hub = MemoryHub::new();
        let writer_node = node(&store, &hub, 1, SyncConfig::default());
        let joiner_node = node(
            &store,
            &hub,
            2,
            SyncConfig {
                unload_grace: Duration::ZERO,
                ..SyncConfig::default()
            },
        );
        let room = format!("join-{}", rand::random::<u32>());
        let mut writer = Editor::join(&writer_node.rooms, &room).await;
        // The joiner comes and goes while the writer types: each join loads the stored
        // document while new updates are committed and published.
        for i in 0..30 {
            writer.type_text(&format!("{}", i % 10));
            writer.pump();
            let mut joiner = Editor::join(&joiner_node.rooms, &room).await;
            writer.type_text("x");
            let mut pair = [writer, joiner];
            until(&mut pair, Duration::from_secs(5), backend, |es| {
                es[0].text() == es[1].text()
            })
            .await;
            [writer, joiner] = pair;
            drop(joiner);
        }
        assert_eq!(writer.text().len(), 60);
        let _ = Bytes::new();
    }
}

impl Editor {
    fn set_presence(&mut self, json: &str) -> u64 {
        let frame = self.client.set_awareness(json);
        self.session
            .handle(&frame)
            .expect("server accepts presence");
        self.client.awareness_id()
    }

    fn sees(&self, id: u64) -> Option<String> {
        self.client
            .peers
            .get(&id)
            .and_then(|s| s.as_deref().map(str::to_owned))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_crosses_nodes_reaches_late_joiners_and_is_removed_when_its_editor_leaves() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let hub = MemoryHub::new();
    let nodes: Vec<Node> = (1..=3)
        .map(|id| node(&store, &hub, id, SyncConfig::default()))
        .collect();
    let room = format!("presence-{}", rand::random::<u32>());
    let mut a = Editor::join(&nodes[0].rooms, &room).await;
    let mut b = Editor::join(&nodes[1].rooms, &room).await;
    let id = a.set_presence(r#"{"user":"ann","cursor":3}"#);
    let mut pair = [a, b];
    until(
        &mut pair,
        Duration::from_secs(5),
        "presence on node 2",
        |es| es[1].sees(id).is_some_and(|s| s.contains("ann")),
    )
    .await;
    [a, b] = pair;
    // A node that loads the room later asks, and node 1 answers with ann's cursor.
    let c = Editor::join(&nodes[2].rooms, &room).await;
    let mut trio = [a, b, c];
    until(
        &mut trio,
        Duration::from_secs(5),
        "presence for a late joiner",
        |es| es[2].sees(id).is_some_and(|s| s.contains("ann")),
    )
    .await;
    // Ann leaves: the others see her cursor go (a removal, not a 30 s expiry).
    let [a, b, c] = trio;
    drop(a);
    let mut rest = [b, c];
    until(
        &mut rest,
        Duration::from_secs(5),
        "the removal on other nodes",
        |es| es.iter().all(|e| e.sees(id).is_none()),
    )
    .await;
}

/// Deleting a room on one node closes it on the others (4410) within a probe interval, even
/// though no message told them, and nothing they write afterwards is stored: the store keeps
/// a tombstone and refuses appends to the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_deleted_on_one_node_closes_on_the_others_and_stays_deleted() {
    for (backend, store) in stores().await {
        if backend == "memory" {
            continue; // the memory store keeps no tombstone (it never serves a cluster)
        }
        let hub = MemoryHub::new();
        let nodes: Vec<Node> = (1..=2)
            .map(|id| node(&store, &hub, id, SyncConfig::default()))
            .collect();
        let room = format!("deleted-{}", rand::random::<u32>());
        let mut a = Editor::join(&nodes[0].rooms, &room).await;
        let b = Editor::join(&nodes[1].rooms, &room).await;
        a.type_text("kept?");
        let mut pair = [a, b];
        until(&mut pair, Duration::from_secs(5), backend, |es| {
            es[1].text() == "kept?"
        })
        .await;
        let [a, mut b] = pair;
        drop(a);
        nodes[0]
            .rooms
            .delete(&room, resonant_sync::Close::new(4410, "workflow deleted"))
            .await
            .unwrap();
        // Node 2 never heard of it; its editor types on.
        b.type_text(" more");
        let close = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let resonant_sync::Outgoing::Close { close, .. } =
                    b.outbox.recv(b.session.peer()).await
                {
                    return close;
                }
            }
        })
        .await
        .expect("node 2 closes the deleted room");
        assert_eq!(close.code, 4410, "{backend}: {close:?}");
        nodes[1].journal.flush().await;
        let stored = store.load(&room).await.unwrap();
        assert!(
            stored.updates.is_empty() && stored.snapshot.is_none(),
            "{backend}: nothing of the deleted room is stored again"
        );
    }
}

/// A node that dies takes its editors' cursors with it on the other nodes, well before the
/// awareness timeout (their liveness lapses; the sweep runs every 2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_cursors_are_removed_elsewhere() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let hub = MemoryHub::new();
    let nodes: Vec<Node> = (1..=2)
        .map(|id| node(&store, &hub, id, SyncConfig::default()))
        .collect();
    let room = format!("ghost-{}", rand::random::<u32>());
    let mut a = Editor::join(&nodes[0].rooms, &room).await;
    let b = Editor::join(&nodes[1].rooms, &room).await;
    let id = a.set_presence(r#"{"user":"gone-soon"}"#);
    let mut pair = [a, b];
    until(
        &mut pair,
        Duration::from_secs(5),
        "presence on node 2",
        |es| es[1].sees(id).is_some(),
    )
    .await;
    let [a, b] = pair;
    // Node 1 dies without a word: no removal is ever sent for its editor.
    hub.kill(1);
    let died = Instant::now();
    let mut rest = [b];
    until(
        &mut rest,
        Duration::from_secs(6),
        "the dead node's cursor removed",
        |es| es[0].sees(id).is_none(),
    )
    .await;
    assert!(
        died.elapsed() < SyncConfig::default().awareness_timeout,
        "removed by the sweep, not by expiry"
    );
    drop(a);
}
