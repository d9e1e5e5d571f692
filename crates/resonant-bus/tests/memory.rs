//! The in-process bus: delivery between simulated nodes and each injectable fault.

use std::time::Duration;

use bytes::Bytes;
use resonant_bus::{Bus, Delivery, MemoryHub, Message, PublishOptions, Subscription};

fn publish(bus: &dyn Bus, topic: &str, n: u32) {
    bus.publish(
        topic,
        Bytes::from(n.to_be_bytes().to_vec()),
        PublishOptions::default(),
    );
}

/// Everything queued right now, messages as their numbers and Resync as `None`.
fn drain(sub: &mut Subscription) -> Vec<Option<u32>> {
    std::iter::from_fn(|| sub.try_recv())
        .map(|delivery| match delivery {
            Delivery::Message(m) => Some(u32::from_be_bytes(m.payload[..].try_into().unwrap())),
            Delivery::Resync => None,
        })
        .collect()
}

fn some(ns: &[u32]) -> Vec<Option<u32>> {
    ns.iter().map(|&n| Some(n)).collect()
}

#[tokio::test]
async fn messages_go_to_every_subscriber_of_the_topic_including_the_origin() {
    let hub = MemoryHub::new();
    let (a, b) = (hub.node(1), hub.node(2));
    let mut on_a = a.subscribe("doc:r1").await;
    let mut on_b = b.subscribe("doc:r1").await;
    let mut other = b.subscribe("doc:r2").await;
    a.publish(
        "doc:r1",
        Bytes::from_static(b"hi"),
        PublishOptions::default(),
    );
    let Some(Delivery::Message(m)) = on_b.try_recv() else {
        panic!("b got nothing");
    };
    assert_eq!((m.origin, &m.payload[..]), (1, &b"hi"[..]));
    assert!(m.sent_ms > 0);
    assert_eq!(
        on_a.try_recv(),
        Some(Delivery::Message(m)),
        "own messages are not filtered"
    );
    assert_eq!(other.try_recv(), None);
    assert_eq!(on_b.try_recv(), None);
    assert_eq!(on_b.topic(), "doc:r1");
}

#[tokio::test]
async fn recv_waits_for_a_message() {
    let hub = MemoryHub::new();
    let (a, b) = (hub.node(1), hub.node(2));
    let mut sub = b.subscribe("t").await;
    let waiter = tokio::spawn(async move { sub.recv().await });
    tokio::task::yield_now().await;
    publish(&*a, "t", 7);
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("recv woke up")
        .unwrap();
    assert!(matches!(
        got,
        Some(Delivery::Message(Message { origin: 1, .. }))
    ));
}

#[tokio::test]
async fn drop_every_k_loses_every_kth_publish() {
    let hub = MemoryHub::new();
    let (a, b) = (hub.node(1), hub.node(2));
    let mut sub = b.subscribe("t").await;
    hub.drop_every(3);
    for n in 1..=7 {
        publish(&*a, "t", n);
    }
    assert_eq!(drain(&mut sub), some(&[1, 2, 4, 5, 7]));
    hub.drop_every(0);
    publish(&*a, "t", 8);
    publish(&*a, "t", 9);
    assert_eq!(drain(&mut sub), some(&[8, 9]));
}

#[tokio::test]
async fn duplicate_every_k_repeats_every_kth_publish() {
    let hub = MemoryHub::new();
    let (a, b) = (hub.node(1), hub.node(2));
    let mut sub = b.subscribe("t").await;
    hub.duplicate_every(2);
    for n in 1..=4 {
        publish(&*a, "t", n);
    }
    assert_eq!(drain(&mut sub), some(&[1, 2, 2, 3, 4, 4]));
}

#[tokio::test]
async fn reorder_swaps_neighbours_per_topic_and_releases_when_turned_off() {
    let hub = MemoryHub::new();
    let (a, b) = (hub.node(1), hub.node(2));
    let mut t = b.subscribe("t").await;
    let mut u = b.subscribe("u").await;
    hub.set_reorder(true);
    for n in 1..=4 {
        publish(&*a, "t", n);
    }
    publish(&*a, "u", 10);
    publish(&*a, "t", 5);
    assert_eq!(drain(&mut t), some(&[2, 1, 4, 3]), "5 is held back");
    assert_eq!(drain(&mut u), some(&[]), "10 is held back");
    hub.set_reorder(false);
    assert_eq!(drain(&mut t), some(&[5]));
    assert_eq!(drain(&mut u), some(&[10]));
}

#[tokio::test]
async fn stall_holds_deliveries_until_resume() {
    let hub = MemoryHub::new();
    let (a, b) = (hub.node(1), hub.node(2));
    let mut sub = b.subscribe("t").await;
    hub.stall();
    publish(&*a, "t", 1);
    publish(&*a, "t", 2);
    assert_eq!(drain(&mut sub), some(&[]));
    // Subscribed after the publishes: as over Redis, it does not get them.
    let mut late = b.subscribe("t").await;
    hub.resume();
    assert_eq!(drain(&mut sub), some(&[1, 2]));
    assert_eq!(drain(&mut late), some(&[]));
}

#[tokio::test]
async fn down_drops_publishes_and_coming_back_up_resyncs_everyone() {
    let hub = MemoryHub::new();
    let (a, b) = (hub.node(1), hub.node(2));
    let mut sub = b.subscribe("t").await;
    hub.set_up(false);
    assert!(!a.is_up() && !hub.is_up());
    assert_eq!(
        a.alive(&[1]).await,
        None,
        "liveness cannot be told while down"
    );
    publish(&*a, "t", 1);
    let mut made_while_down = b.subscribe("t").await;
    assert_eq!(drain(&mut sub), some(&[]));
    hub.set_up(true);
    assert!(a.is_up());
    publish(&*a, "t", 2);
    assert_eq!(drain(&mut sub), [vec![None], some(&[2])].concat());
    assert_eq!(
        drain(&mut made_while_down),
        [vec![None], some(&[2])].concat()
    );
}

#[tokio::test]
async fn a_full_queue_drops_and_owes_one_resync() {
    let hub = MemoryHub::new();
    let (a, b) = (hub.node(1), hub.node(2));
    let mut slow = b.subscribe("t").await;
    let mut fast = b.subscribe("t").await;
    let capacity = resonant_bus::QUEUE_CAPACITY as u32;
    for n in 0..capacity {
        publish(&*a, "t", n);
    }
    assert_eq!(drain(&mut fast).len(), capacity as usize);
    for n in capacity..capacity + 10 {
        publish(&*a, "t", n);
    }
    assert_eq!(
        drain(&mut fast),
        some(&(capacity..capacity + 10).collect::<Vec<_>>()),
        "the other subscription is not held back"
    );
    let got = drain(&mut slow);
    assert_eq!(got[0], None, "the Resync comes first");
    assert_eq!(got[1..], some(&(0..capacity).collect::<Vec<_>>()));
    publish(&*a, "t", 1000);
    assert_eq!(drain(&mut slow), some(&[1000]), "space again: delivered");
}

#[tokio::test]
async fn dropping_a_subscription_leaves_the_others_of_its_topic_alone() {
    let hub = MemoryHub::new();
    let (a, b) = (hub.node(1), hub.node(2));
    let first = b.subscribe("t").await;
    let mut second = b.subscribe("t").await;
    drop(first);
    publish(&*a, "t", 1);
    assert_eq!(drain(&mut second), some(&[1]));
    // A new subscription of the same topic made after a drop is independent too.
    let mut third = b.subscribe("t").await;
    drop(second);
    publish(&*a, "t", 2);
    assert_eq!(drain(&mut third), some(&[2]));
}

#[tokio::test]
async fn killed_and_shut_down_nodes_are_dead_and_their_subscriptions_end() {
    let hub = MemoryHub::new();
    let (a, b, c) = (hub.node(1), hub.node(2), hub.node(3));
    assert_eq!(
        a.alive(&[1, 2, 3, 99]).await,
        Some(vec![true, true, true, false])
    );
    let mut on_b = b.subscribe("t").await;
    let mut on_a = a.subscribe("t").await;
    hub.kill(2);
    c.shutdown().await;
    assert_eq!(a.alive(&[1, 2, 3]).await, Some(vec![true, false, false]));
    assert_eq!(on_b.recv().await, None);
    publish(&*b, "t", 1);
    assert_eq!(drain(&mut on_a), some(&[]), "a dead node publishes nothing");
    assert_eq!(b.subscribe("t").await.recv().await, None);
}

#[tokio::test]
async fn invalid_topics_are_refused() {
    let hub = MemoryHub::new();
    let a = hub.node(1);
    let mut bad = a.subscribe("no spaces").await;
    assert_eq!(bad.recv().await, None);
    publish(&*a, "", 1);
}
