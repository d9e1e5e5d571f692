//! Schedule triggers: cron expressions in a time zone, and the ticker that fires them.
//!
//! Every node runs the ticker. A due schedule's tick is started under the idempotency key
//! [`tick_key`] (unique per workflow and user in the database), then the schedule's
//! `next_fire_at` is moved on with a compare-and-set. So two nodes that see one tick start
//! one execution between them, and a node that dies between the start and the move repeats
//! the start, which finds the first one: exactly one execution per tick, on SQLite or on a
//! Postgres several nodes share, with no lock held across a start.
//!
//! Missed ticks (the server was down) follow the schedule's policy: `skip` runs none of
//! them, `run-once` runs one execution for the last of them. A tick fired within
//! [`ON_TIME_MS`] of its time is on time, whatever the policy.

use std::str::FromStr;
use std::sync::Weak;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::db::now_ms;
use crate::db::triggers::{self as store, tick_key, TriggerRow};
use crate::{Engine, EngineError, Inner};

/// How late a tick may fire and still count as on time rather than missed.
pub const ON_TIME_MS: i64 = 5_000;
/// How often the ticker looks for due schedules when none is due sooner (a schedule created
/// on another node is seen within this).
const POLL: Duration = Duration::from_secs(1);
/// Due schedules handled per pass.
const BATCH: i64 = 100;

/// A parsed schedule: a cron expression (5 fields, or 6 with seconds first) in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: croner::Cron,
    tz: chrono_tz::Tz,
}

impl Schedule {
    /// Parses `cron` in the IANA time zone `tz` (`UTC`, `Europe/Berlin`); the error says
    /// what is wrong.
    pub fn parse(cron: &str, tz: &str) -> Result<Schedule, String> {
        let tz = chrono_tz::Tz::from_str(tz).map_err(|_| {
            format!("{tz:?} is not an IANA time zone (such as UTC or Europe/Berlin)")
        })?;
        let cron =
            croner::Cron::from_str(cron).map_err(|e| format!("not a cron expression: {e}"))?;
        let s = Schedule { cron, tz };
        if s.next_after(now_ms()).is_none() {
            return Err("the expression never fires".into());
        }
        Ok(s)
    }

    fn at(&self, ms: i64) -> Option<chrono::DateTime<chrono_tz::Tz>> {
        Utc.timestamp_millis_opt(ms)
            .single()
            .map(|t| t.with_timezone(&self.tz))
    }

    /// The tick nearest `ms` in one direction (`forward`), `ms` itself counting when
    /// `inclusive`.
    fn tick(&self, ms: i64, forward: bool, inclusive: bool) -> Option<i64> {
        let t = self.at(ms)?;
        let found = if forward {
            self.cron.find_next_occurrence(&t, inclusive)
        } else {
            self.cron.find_previous_occurrence(&t, inclusive)
        };
        found.ok().map(|t| t.timestamp_millis())
    }

    /// The first tick strictly after `ms` (Unix ms).
    pub fn next_after(&self, ms: i64) -> Option<i64> {
        self.tick(ms, true, false)
    }

    /// The last tick at or before `ms`.
    pub fn last_at_or_before(&self, ms: i64) -> Option<i64> {
        self.tick(ms, false, true)
    }

    /// The last tick strictly before `ms`.
    fn last_before(&self, ms: i64) -> Option<i64> {
        self.tick(ms, false, false)
    }

    /// The next `n` ticks after `ms`.
    pub fn upcoming(&self, ms: i64, n: usize) -> Vec<i64> {
        let mut out = Vec::with_capacity(n);
        let mut at = ms;
        while out.len() < n {
            match self.next_after(at) {
                Some(t) => {
                    out.push(t);
                    at = t;
                }
                None => break,
            }
        }
        out
    }
}

/// What one pass does with a due schedule whose next tick is `from`, at time `now`: the
/// ticks to fire (each with whether it was missed) and the tick after which the schedule
/// goes on.
pub fn plan(
    schedule: &Schedule,
    missed_policy: &str,
    from: i64,
    now: i64,
) -> (Vec<(i64, bool)>, i64) {
    let latest = schedule
        .last_at_or_before(now)
        .filter(|&t| t >= from)
        .unwrap_or(from);
    let late = now - latest > ON_TIME_MS;
    let mut fire = Vec::new();
    if missed_policy == "run-once" {
        // The last missed tick: the latest one when it is late, otherwise the one before it
        // (when that is still one this schedule had not fired).
        let missed = if late {
            Some(latest)
        } else {
            schedule.last_before(latest).filter(|&t| t >= from)
        };
        fire.extend(missed.map(|t| (t, true)));
    }
    if !late {
        fire.push((latest, false));
    }
    (fire, latest)
}

impl Engine {
    /// Fires the schedules that are due now; how many executions it started.
    pub async fn fire_due_schedules(&self) -> Result<usize, EngineError> {
        let now = now_ms();
        let mut started = 0;
        for t in store::due_schedules(&self.inner.db, now, BATCH).await? {
            started += self.fire_schedule(&t, now).await?;
        }
        Ok(started)
    }

    async fn fire_schedule(&self, t: &TriggerRow, now: i64) -> Result<usize, EngineError> {
        let Some(from) = t.next_fire_at else {
            return Ok(0);
        };
        let schedule = Schedule::parse(
            t.cron.as_deref().unwrap_or_default(),
            t.timezone.as_deref().unwrap_or("UTC"),
        );
        let schedule = match schedule {
            Ok(s) => s,
            Err(e) => {
                // Stored before a rule changed (or written by hand): stop it, say why.
                store::advance(&self.inner.db, &t.id, from, None, None).await?;
                store::set_last_error(&self.inner.db, &t.id, Some(&e)).await?;
                return Ok(0);
            }
        };
        let (fire, latest) = plan(&schedule, t.missed.as_deref().unwrap_or("skip"), from, now);
        let mut started = 0;
        let mut fired = None;
        for (tick, missed) in fire {
            match self.fire_tick(t, tick, missed).await {
                Ok(new) => {
                    started += usize::from(new);
                    fired = Some(tick);
                    store::set_last_error(&self.inner.db, &t.id, None).await?;
                }
                Err(EngineError::Db(e)) => return Err(e.into()),
                Err(e) => {
                    // Nothing to retry: the tick passes, and the trigger says why it ran
                    // nothing (the history has no execution to show it).
                    tracing::warn!(trigger = %t.id, tick, error = %e, "a scheduled run did not start");
                    store::set_last_error(&self.inner.db, &t.id, Some(&e.to_string())).await?;
                }
            }
        }
        let next = schedule.next_after(latest);
        store::advance(&self.inner.db, &t.id, from, next, fired).await?;
        Ok(started)
    }

    /// Starts the execution of one tick; whether it is new (false: it had started before).
    async fn fire_tick(
        &self,
        t: &TriggerRow,
        tick: i64,
        missed: bool,
    ) -> Result<bool, EngineError> {
        let workflow = crate::db::workflow(&self.inner.db, &t.workflow_id)
            .await?
            .ok_or_else(|| EngineError::Conflict("the workflow no longer exists".into()))?;
        let at = Utc
            .timestamp_millis_opt(tick)
            .single()
            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        let input = json!({"trigger": {
            "id": t.id, "kind": "schedule", "name": t.name,
            "scheduledFor": at, "missed": missed,
        }});
        let (_, new) = self
            .start_triggered(&workflow, t, input, Some(tick_key(&t.id, tick)))
            .await?;
        Ok(new)
    }
}

/// The ticker: fires due schedules until `stop`. Holds the engine weakly, so it never keeps
/// a dropped engine alive.
pub(crate) async fn run(inner: Weak<Inner>, stop: CancellationToken) {
    loop {
        let wait = {
            let Some(inner) = inner.upgrade() else { return };
            let engine = Engine { inner };
            if let Err(e) = engine.fire_due_schedules().await {
                tracing::warn!(error = %e, "firing schedules failed; trying again");
            }
            match store::next_due(&engine.inner.db).await {
                Ok(Some(at)) => Duration::from_millis((at - now_ms()).clamp(0, 1000) as u64),
                _ => POLL,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait.min(POLL)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn cron_in_a_time_zone() {
        let s = Schedule::parse("0 9 * * *", "Europe/Berlin").unwrap();
        // 09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC in summer.
        assert_eq!(
            s.next_after(ms("2026-12-07T00:00:00Z")),
            Some(ms("2026-12-07T08:00:00Z"))
        );
        assert_eq!(
            s.next_after(ms("2026-07-07T00:00:00Z")),
            Some(ms("2026-07-07T07:00:00Z"))
        );
        let secs = Schedule::parse("*/2 * * * * *", "UTC").unwrap();
        assert_eq!(
            secs.upcoming(ms("2026-12-07T00:00:00Z"), 3),
            vec![
                ms("2026-12-07T00:00:02Z"),
                ms("2026-12-07T00:00:04Z"),
                ms("2026-12-07T00:00:06Z")
            ]
        );
        assert!(Schedule::parse("0 9 * * *", "Mars/Olympus")
            .unwrap_err()
            .contains("time zone"));
        assert!(Schedule::parse("61 * * * *", "UTC")
            .unwrap_err()
            .contains("cron"));
        assert!(
            Schedule::parse("0 0 30 2 *", "UTC").is_err(),
            "February 30th never comes"
        );
    }

    #[test]
    fn missed_ticks_follow_the_policy() {
        let s = Schedule::parse("* * * * * *", "UTC").unwrap();
        let t0 = ms("2026-12-07T00:00:00Z");
        // On time: the tick fires, whatever the policy.
        assert_eq!(plan(&s, "skip", t0, t0 + 300), (vec![(t0, false)], t0));
        assert_eq!(plan(&s, "run-once", t0, t0 + 300), (vec![(t0, false)], t0));
        // Down for ten seconds: skip fires only the current tick; run-once also fires the
        // last missed one, once.
        let now = t0 + 10_300;
        assert_eq!(
            plan(&s, "skip", t0, now),
            (vec![(t0 + 10_000, false)], t0 + 10_000)
        );
        assert_eq!(
            plan(&s, "run-once", t0, now),
            (vec![(t0 + 9_000, true), (t0 + 10_000, false)], t0 + 10_000)
        );
        // A daily schedule whose only due tick is hours late: missed.
        let d = Schedule::parse("0 6 * * *", "UTC").unwrap();
        let six = ms("2026-12-07T06:00:00Z");
        let nine = ms("2026-12-07T09:00:00Z");
        assert_eq!(plan(&d, "skip", six, nine), (vec![], six));
        assert_eq!(plan(&d, "run-once", six, nine), (vec![(six, true)], six));
    }
}
