//! A reader: one dedicated connection running `XREAD BLOCK` over its topics' streams and its
//! wake-up stream, routing each entry into the subscribers' queues without ever waiting for
//! them.
//!
//! The connection is used for nothing else: a blocking command on a shared multiplexed
//! connection would hold up every command queued behind it. Any error or timeout drops the
//! connection (a late reply must not be taken for the next command's), and everything this
//! reader read is anchored anew, with a Resync, once it is back.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, RedisResult, Value};
use tokio::time::Instant;

use crate::codec::{
    decode_entry, parse_last_entry, parse_xread, Decoded, LastEntry, ShapeError, StreamId,
};
use crate::redis_bus::{Inner, ReaderShared};

/// Most entries one `XREAD` returns per stream.
const COUNT: usize = 512;
/// How late past its `BLOCK` an `XREAD` reply may come before the connection is deemed dead:
/// loaded servers answer blocking reads more than a second late (go-redis #647).
const REPLY_MARGIN: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

static MESSAGES_IN: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_bus_messages_in_total"));
static MALFORMED: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_bus_malformed_total"));
static RECONNECTS: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_bus_reader_reconnects_total"));
static STREAM_RESTARTS: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_bus_stream_restarts_total"));

/// Why a reader gave its connection up.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Shape(#[from] ShapeError),
}

/// Runs reader `me` until the bus is cancelled.
pub(crate) async fn run(inner: Arc<Inner>, me: Arc<ReaderShared>) {
    let mut backoff = MIN_BACKOFF;
    let mut was_connected = false;
    let mut failures = 0u64;
    loop {
        let connected = tokio::select! {
            _ = inner.cancel.cancelled() => break,
            connected = connect(&inner, &me) => connected,
        };
        match connected {
            Ok(mut conn) => {
                if was_connected {
                    RECONNECTS.increment(1);
                }
                tracing::info!(reader = %me.name, "bus reader connected");
                was_connected = true;
                failures = 0;
                backoff = MIN_BACKOFF;
                inner.set_up(&me, true);
                let error = tokio::select! {
                    _ = inner.cancel.cancelled() => break,
                    ended = serve(&inner, &me, &mut conn) => match ended {
                        Err(error) => error,
                        Ok(never) => match never {},
                    },
                };
                drop(conn);
                inner.set_up(&me, false);
                inner.state.lock().topics.reader_failed(me.index);
                tracing::warn!(
                    reader = %me.name,
                    %error,
                    "bus reader lost its connection; reconnecting, then resyncing its topics"
                );
            }
            Err(error) => {
                failures += 1;
                // One warning per outage; the retries every second after it only at debug.
                if failures == 1 {
                    tracing::warn!(reader = %me.name, %error, "bus reader cannot connect to Redis; retrying");
                } else {
                    tracing::debug!(reader = %me.name, %error, failures, "bus reader still cannot connect");
                }
            }
        }
        tokio::select! {
            _ = inner.cancel.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    inner.set_up(&me, false);
}

async fn connect(inner: &Inner, me: &ReaderShared) -> RedisResult<MultiplexedConnection> {
    // redis-rs 1.x would time every reply out after 500 ms by default, failing each XREAD that
    // blocks longer (redis-rs #1924); `None` would let a silent partition hang the read.
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(inner.config.block + REPLY_MARGIN))
        .set_connection_timeout(Some(CONNECT_TIMEOUT));
    let mut conn = inner
        .client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(&me.name)
        .query_async::<()>(&mut conn)
        .await?;
    Ok(conn)
}

/// Errors that concern one key rather than the connection: that key is left out of reads
/// (one such key in the shared `XREAD` would fail it for every topic).
fn key_fault(error: &RedisError) -> bool {
    matches!(error.code(), Some("WRONGTYPE" | "NOPERM"))
}

/// `XREVRANGE key + - COUNT 1` for each key in one pipeline: each stream's last entry
/// (`None`: no such key), or that key's own error.
async fn last_entries(
    conn: &mut MultiplexedConnection,
    keys: &[&str],
) -> Result<Vec<RedisResult<Option<LastEntry>>>, ReadError> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for key in keys {
        pipe.cmd("XREVRANGE")
            .arg(*key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
    }
    let replies: Vec<RedisResult<Value>> = pipe.query_async(conn).await?;
    if replies.len() != keys.len() {
        return Err(ShapeError("pipeline reply count").into());
    }
    replies
        .into_iter()
        .map(|reply| match reply {
            Ok(value) => Ok(Ok(parse_last_entry(value)?)),
            Err(error) => Ok(Err(error)),
        })
        .collect()
}

/// Reads until something fails.
async fn serve(
    inner: &Inner,
    me: &ReaderShared,
    conn: &mut MultiplexedConnection,
) -> Result<Infallible, ReadError> {
    // Anchored, like every topic, when the connection is new.
    let mut poke_cursor: Option<StreamId> = None;
    let mut next_check = Instant::now() + inner.config.stream_check;
    loop {
        let to_anchor = inner.state.lock().topics.to_anchor(me.index);
        if !to_anchor.is_empty() || poke_cursor.is_none() {
            let mut keys = vec![me.poke_key.as_str()];
            keys.extend(to_anchor.iter().map(|k| &*k.key));
            let mut lasts = last_entries(conn, &keys).await?.into_iter();
            let poke_last = lasts.next().expect("one reply per key")?;
            poke_cursor = Some(poke_last.map_or(StreamId::ZERO, |last| last.id));
            let mut state = inner.state.lock();
            for (topic, last) in to_anchor.iter().zip(lasts) {
                match last {
                    Ok(last) => {
                        state.topics.hard_anchor(
                            &topic.key,
                            topic.generation,
                            last.unwrap_or(LastEntry::NONE),
                        );
                    }
                    Err(error) if key_fault(&error) => {
                        tracing::warn!(key = %topic.key, %error, "bus key is not a readable stream; leaving it out until it is");
                        state.topics.mark_broken(&topic.key, topic.generation);
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        }

        if Instant::now() >= next_check {
            let to_check = inner.state.lock().topics.to_check(me.index);
            let mut keys = vec![me.poke_key.as_str()];
            keys.extend(to_check.iter().map(|k| &*k.key));
            let mut lasts = last_entries(conn, &keys).await?.into_iter();
            let poke_last = lasts.next().expect("one reply per key")?;
            poke_cursor = match (poke_last, poke_cursor) {
                (Some(last), Some(cursor)) => Some(last.id.min(cursor)),
                _ => Some(StreamId::ZERO),
            };
            let mut state = inner.state.lock();
            for (topic, last) in to_check.iter().zip(lasts) {
                match last {
                    Ok(last) => {
                        if state.topics.checked(&topic.key, topic.generation, last) {
                            STREAM_RESTARTS.increment(1);
                            tracing::warn!(key = %topic.key, "bus stream restarted under the read cursor; re-anchored with a Resync");
                        }
                    }
                    Err(error) if key_fault(&error) => {
                        state.topics.mark_broken(&topic.key, topic.generation);
                    }
                    Err(error) => return Err(error.into()),
                }
            }
            next_check = Instant::now() + inner.config.stream_check;
        }

        let plan = inner.state.lock().topics.to_read(me.index);
        let mut xread = redis::cmd("XREAD");
        xread
            .arg("COUNT")
            .arg(COUNT)
            .arg("BLOCK")
            .arg(inner.config.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&me.poke_key);
        for read in &plan {
            xread.arg(&*read.key);
        }
        xread.arg(poke_cursor.unwrap_or_default().to_string());
        for read in &plan {
            xread.arg(read.cursor.to_string());
        }
        let reply: Value = xread.query_async(conn).await?;
        let streams = parse_xread(reply)?;

        // Decoded before taking the lock, which subscribers and other readers share.
        let generations: HashMap<&[u8], (&str, u64)> = plan
            .iter()
            .map(|r| (r.key.as_bytes(), (&*r.key, r.generation)))
            .collect();
        let mut batches = Vec::with_capacity(streams.len());
        for stream in streams {
            if stream.key == me.poke_key.as_bytes() {
                if let Some((last, _)) = stream.entries.last() {
                    poke_cursor = poke_cursor.max(Some(*last));
                }
                continue;
            }
            let Some(&(key, generation)) = generations.get(stream.key.as_slice()) else {
                continue;
            };
            let entries: Vec<(StreamId, Decoded)> = stream
                .entries
                .into_iter()
                .map(|(id, fields)| (id, decode_entry(fields)))
                .collect();
            batches.push((key, generation, entries));
        }
        let mut state = inner.state.lock();
        for (key, generation, entries) in batches {
            let routed = state.topics.route(key, generation, entries);
            MESSAGES_IN.increment(routed.messages);
            MALFORMED.increment(routed.malformed);
        }
    }
}
