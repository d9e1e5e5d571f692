//! Issue 15 item 12: `executions.resume` abuse. Replay requests naming invented executions
//! leave no state behind (they used to grow a socket's memory ~7 MB/s until it closed), and
//! sockets replaying a long execution over and over do not slow anyone else's run (replays
//! used to read the log inside the one event writer: other users' runs went 0.69 s → 2-6 s).

mod common;

use std::time::{Duration, Instant};

use common::api::Backend;
use common::exec::*;
use common::rss_kib;
use serde_json::{json, Value};

fn resume(after: serde_json::Map<String, Value>) -> bytes::Bytes {
    resonant_client::protocol::encode_stateless(
        &json!({"type": "executions.resume", "after": after, "running": true}).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_floods_hold_no_memory_and_do_not_slow_other_runs() {
    let env = Env::new(Backend::Sqlite).await;
    // The attacker's workflow: one finished execution with a long log.
    let long = env
        .workflow(json!({
            "blocks": [
                block("in", "input", json!({})),
                block("each", "loop", json!({"items": "input.items", "maxIterations": 400, "concurrency": 4})),
                block("step", "transform", json!({"template": "{{ loop.index }}"})),
                block("out", "output", json!({})),
            ],
            "connections": [
                edge("in", "each"),
                edge_h("each", "body", "step"),
                json!({"id": "back", "source": "step", "target": "each", "targetHandle": "next"}),
                edge_h("each", "done", "out"),
            ],
        }))
        .await;
    let mut w = env.watcher(&long).await;
    let items: Vec<u32> = (0..400).collect();
    let long_run = env.run(&long, json!({ "items": items })).await;
    let events = until_finished(&mut w, &long_run).await;
    assert!(events.len() > 800, "{} events", events.len());
    w.close().await;
    // The canary: another workflow, run and timed before and during the flood.
    let quick = env
        .workflow(json!({
            "blocks": [block("in", "input", json!({})), block("a", "transform", json!({"template": "{{ input.n }}"})), block("out", "output", json!({}))],
            "connections": [edge("in", "a"), edge("a", "out")],
        }))
        .await;
    let mut canary = env.watcher(&quick).await;
    let mut timed_run = async |n: u32| {
        let started = Instant::now();
        let id = env.run(&quick, json!({ "n": n })).await;
        let events = until_finished(&mut canary, &id).await;
        assert_eq!(events.last().unwrap()["type"], "execution.completed");
        started.elapsed()
    };
    let quiet = timed_run(0).await;

    let pid = std::process::id();
    let rss_before = rss_kib(pid);
    // Ten sockets, each asking again and again: for the long execution from its start, plus
    // 99 executions that do not exist (half of them 500 bytes of junk, half plausible uuids).
    let mut floods = Vec::new();
    for s in 0..10 {
        let mut c = env.watcher(&long).await;
        let long_run = long_run.clone();
        floods.push(tokio::spawn(async move {
            for r in 0..100 {
                let mut after = serde_json::Map::new();
                after.insert(long_run.clone(), json!(0));
                for i in 0..99 {
                    let id = if i % 2 == 0 {
                        format!("{s}-{r}-{i}-{}", "x".repeat(500))
                    } else {
                        uuid::Uuid::new_v4().to_string()
                    };
                    after.insert(id, json!(0));
                }
                c.send(resume(after)).await;
                // Read what arrived, so the server is never held back by this socket.
                c.sync().await;
            }
            c
        }));
    }
    let mut during = Vec::new();
    for n in 1..=5 {
        during.push(timed_run(n).await);
    }
    let mut sockets = Vec::new();
    for f in floods {
        sockets.push(f.await.unwrap());
    }
    let rss_after = rss_kib(pid);
    let worst = during.iter().max().copied().unwrap();
    eprintln!("canary run alone {quiet:?}, during the flood {during:?}; RSS {rss_before} → {rss_after} KiB");
    assert!(
        worst < quiet + Duration::from_millis(1500),
        "a run took {worst:?} during the replay flood (alone: {quiet:?})"
    );
    assert!(
        rss_after < rss_before + 48 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // Replays still work: a socket asking now gets the whole log, in order.
    drop(sockets);
    let mut c = env.watcher(&long).await;
    let mut after = serde_json::Map::new();
    after.insert(long_run.clone(), json!(0));
    c.send(resume(after)).await;
    let (id, want) = (long_run.clone(), events.len());
    c.until("a full replay", move |s| {
        s.stateless.iter().filter(|m| m.contains(&id)).count() >= want
    })
    .await;
    assert_gapless(&events_of(&c, &long_run));
    env.cleanup().await;
}
