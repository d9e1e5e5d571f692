//! Fail points: named places in the server where a test can make a debug build die, stall or
//! wait, to crash it at an exact moment instead of "somewhere around" a kill -9.
//!
//! Armed by the environment at the first hit: `RESONANT_FAILPOINTS="name=action[@n],…"`,
//! where `action` is `abort` (the process ends at once, as under kill -9), `stall` (the
//! caller waits for ever: the node goes on otherwise, as if that one step were hung) or
//! `sleep:<ms>`, and `@n` fires it from the n-th hit of that point on (default: the first).
//!
//! Release builds compile every point to nothing and never read the variable. We keep this
//! beside `fail` (tikv/fail-rs) because its actions block the OS thread (a tokio worker
//! here) and none of them ends the process.

#[cfg(debug_assertions)]
mod armed {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::Duration;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Action {
        Abort,
        Stall,
        Sleep(Duration),
    }

    pub(crate) struct Point {
        pub(crate) action: Action,
        pub(crate) from: u64,
        hits: AtomicU64,
    }

    static POINTS: OnceLock<HashMap<String, Point>> = OnceLock::new();

    /// Parses `name=action[@n],…`; a malformed entry is a panic, since only tests set it.
    pub(crate) fn parse(spec: &str) -> HashMap<String, Point> {
        let mut points = HashMap::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, rest) = entry
                .split_once('=')
                .unwrap_or_else(|| panic!("RESONANT_FAILPOINTS: `{entry}` has no `=`"));
            let (action, from) = match rest.split_once('@') {
                Some((a, n)) => (
                    a,
                    n.parse::<u64>()
                        .ok()
                        .filter(|n| *n >= 1)
                        .unwrap_or_else(|| panic!("RESONANT_FAILPOINTS: bad count in `{entry}`")),
                ),
                None => (rest, 1),
            };
            let action = match action {
                "abort" => Action::Abort,
                "stall" => Action::Stall,
                a => match a.strip_prefix("sleep:").and_then(|ms| ms.parse().ok()) {
                    Some(ms) => Action::Sleep(Duration::from_millis(ms)),
                    None => panic!("RESONANT_FAILPOINTS: unknown action in `{entry}`"),
                },
            };
            points.insert(
                name.to_string(),
                Point {
                    action,
                    from,
                    hits: AtomicU64::new(0),
                },
            );
        }
        points
    }

    pub(crate) fn due(name: &str) -> Option<Action> {
        let points = POINTS.get_or_init(|| {
            std::env::var("RESONANT_FAILPOINTS")
                .map(|s| parse(&s))
                .unwrap_or_default()
        });
        let point = points.get(name)?;
        let hit = point.hits.fetch_add(1, Ordering::Relaxed) + 1;
        (hit >= point.from).then_some(point.action)
    }

    pub(crate) async fn act(name: &str, action: Action) {
        match action {
            Action::Abort => {
                eprintln!("fail point {name}: aborting");
                std::process::abort();
            }
            Action::Stall => {
                eprintln!("fail point {name}: stalled");
                std::future::pending::<()>().await;
            }
            Action::Sleep(d) => tokio::time::sleep(d).await,
        }
    }
}

/// Passes the fail point `name`: dies, stalls or waits there if a test armed it.
#[cfg(debug_assertions)]
pub async fn hit(name: &str) {
    if let Some(action) = armed::due(name) {
        armed::act(name, action).await;
    }
}

/// Passes the fail point `name` (release builds: nothing).
#[cfg(not(debug_assertions))]
#[inline(always)]
pub async fn hit(_name: &str) {}

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::armed::{parse, Action};
    use std::time::Duration;

    #[test]
    fn specs_parse_with_counts_and_defaults() {
        let p = parse("a=abort, b=stall@3,c=sleep:250@2");
        assert_eq!(p["a"].action, Action::Abort);
        assert_eq!(p["a"].from, 1);
        assert_eq!(p["b"].action, Action::Stall);
        assert_eq!(p["b"].from, 3);
        assert_eq!(p["c"].action, Action::Sleep(Duration::from_millis(250)));
        assert_eq!(p["c"].from, 2);
    }

    #[test]
    #[should_panic(expected = "unknown action")]
    fn a_misspelt_action_is_refused() {
        parse("a=abrot");
    }

    #[test]
    #[should_panic(expected = "bad count")]
    fn a_zero_count_is_refused() {
        parse("a=abort@0");
    }
}
