//! A whole connection fed arbitrary frames: the real rooms, sessions and journal over an
//! in-memory store, as the WebSocket transport drives them. Panics that room code catches
//! (yrs failing inside an update) are expected; a panic that escapes, an abort or a huge
//! allocation is a finding. Afterwards the room is unloaded and loaded again from what the
//! journal stored: a document the server accepted must load (and, with FUZZ_STRICT_RELOAD=1,
//! have the same state vector).
//!
//! Input: frames, each a little-endian u16 length and that many bytes (the last one may be
//! short).

#![no_main]

#[path = "common.rs"]
mod common;

use std::backtrace::Backtrace;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, LazyLock, Mutex, Once};

use libfuzzer_sys::fuzz_target;
use resonant_store::{Journal, JournalConfig, MemoryStore, Store};
use resonant_sync::{Rooms, SyncConfig};
use yrs::{ReadTxn, StateVector, Transact};

/// One runtime for all inputs. Paused time: journal commit intervals and room unload timers
/// fire as soon as the runtime is idle, so no input waits on the wall clock.
static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("tokio runtime")
});

/// FUZZ_STRICT_RELOAD=1 compares state vectors after every reload. By default the reload must
/// only succeed: documents whose clients re-used ids with different content reload with a
/// different state vector, pending structs or not (an open finding, fuzz/findings/README.md),
/// and CI must not fail on a known finding each run.
static STRICT_RELOAD: LazyLock<bool> =
    LazyLock::new(|| std::env::var_os("FUZZ_STRICT_RELOAD").is_some());

/// The last panic's message and (unresolved) backtrace, printed only if that panic escapes
/// the server code; resolving symbols for every caught panic would slow fuzzing down.
static LAST_PANIC: Mutex<Option<(String, Backtrace)>> = Mutex::new(None);

/// The room's state vector, and whether structs or deletes wait for missing dependencies.
fn state_vector(rooms: &Rooms) -> (StateVector, bool) {
    let room = rooms.loaded().pop().expect("room is loaded");
    room.with_doc(|doc| {
        let txn = doc.transact();
        let store = txn.store();
        let pending = store.pending_update().is_some() || store.pending_ds().is_some();
        (txn.state_vector(), pending)
    })
}

/// A state vector without clients at clock 0: yrs lists a client whose only structs sit
/// behind a hole at clock 0, and a reload (rightly) does not.
fn clocks(sv: &StateVector) -> std::collections::BTreeMap<u64, u32> {
    sv.iter()
        .filter(|(_, &clock)| clock > 0)
        .map(|(c, &clock)| (c.get(), clock))
        .collect()
}

/// Serves one connection's frames; returns the document's state vector after them, or None
/// if the room was closed (after a caught yrs panic its state is suspect, so not compared).
async fn serve(store: Arc<dyn Store>, data: &[u8]) -> Option<(StateVector, bool)> {
    let (journal, writer) = Journal::start(store.clone(), JournalConfig::default());
    let rooms = Rooms::new(store, journal.clone(), SyncConfig::default());
    // A second connection that only listens, so updates and awareness are fanned out.
    let (watcher, mut watcher_out) = rooms.join("fuzz", true).await.expect("join");
    let (mut session, mut outbox) = rooms.join("fuzz", true).await.expect("join");
    for frame in common::pieces(data) {
        let result = session.handle(frame);
        while outbox.try_recv(session.peer()).is_some() {}
        while watcher_out.try_recv(watcher.peer()).is_some() {}
        // The transport closes the connection on the first error.
        if result.is_err() {
            break;
        }
    }
    let state = (!session.peer().is_closing()).then(|| state_vector(&rooms));
    drop((session, outbox, watcher, watcher_out));
    rooms.shutdown().await;
    journal.close();
    writer.await.expect("journal writer");
    state
}

/// Loads the room from what the journal stored, as after a restart.
async fn reload(store: Arc<dyn Store>) -> (StateVector, bool) {
    let (journal, writer) = Journal::start(store.clone(), JournalConfig::default());
    let rooms = Rooms::new(store, journal.clone(), SyncConfig::default());
    let state = match rooms.join("fuzz", false).await {
        Ok(conn) => {
            let state = state_vector(&rooms);
            drop(conn);
            state
        }
        Err(e) => panic!("the document the server accepted does not load again: {e}"),
    };
    rooms.shutdown().await;
    journal.close();
    writer.await.expect("journal writer");
    state
}

async fn run(data: &[u8]) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    if let Some((served, _pending)) = serve(store.clone(), data).await {
        let (loaded, _) = reload(store).await;
        // A client that re-sent ids with different content makes yrs integrate differently
        // on reload (fuzz/findings/README.md); compare only on request.
        if *STRICT_RELOAD {
            assert_eq!(
                clocks(&served),
                clocks(&loaded),
                "reloaded document differs from the one served"
            );
        }
    }
    // Rooms leave tasks behind: unload timers and the awareness sweep, which end once their
    // timers fire. Time is paused, so this sleep returns as soon as they have run, leaving
    // nothing allocated for the next input (libFuzzer's leak check would otherwise scan the
    // heap after every input).
    let config = SyncConfig::default();
    tokio::time::sleep((config.unload_grace + config.awareness_timeout) * 2).await;
}

fuzz_target!(|data: &[u8]| {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // libfuzzer-sys aborts on every panic, even one the room catches; record instead,
        // and abort below only for panics that escape.
        let show = std::env::var_os("FUZZ_SHOW_CAUGHT_PANICS").is_some();
        std::panic::set_hook(Box::new(move |info| {
            if show {
                eprintln!("caught panic: {info}");
            }
            let last = (info.to_string(), Backtrace::force_capture());
            *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(last);
        }));
    });
    if catch_unwind(AssertUnwindSafe(|| RT.block_on(run(data)))).is_err() {
        if let Some((msg, bt)) = LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).take() {
            eprintln!("panic escaped the server code: {msg}\n{bt}");
        }
        std::process::abort();
    }
});
