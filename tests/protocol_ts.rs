//! The TypeScript SDK's `protocol.ts` against the Rust protocol crate: every frame number,
//! limit and close code, and every JSON message's fields (which are optional, what they
//! hold), so a message changed on one side and not the other fails here.

use std::collections::{BTreeMap, BTreeSet};

use resonant_protocol::{
    close_code, ClientMsg, ConnectionMsg, ExecutionRequest, RawJson, Sender, ServerMsg,
};
use serde_json::{json, Value};

const TS: &str = include_str!("../client-sdk/packages/client/src/protocol.ts");

/// `export const NAME = <number>` lines.
fn ts_consts() -> BTreeMap<String, i64> {
    TS.lines()
        .filter_map(|l| l.strip_prefix("export const "))
        .filter_map(|l| l.split_once(" = "))
        .filter_map(|(name, v)| Some((name.to_owned(), v.trim().parse().ok()?)))
        .collect()
}

/// The `CLOSE` object's entries.
fn ts_close_codes() -> BTreeMap<String, i64> {
    let body = TS
        .split_once("export const CLOSE = {")
        .expect("protocol.ts has CLOSE")
        .1
        .split_once('}')
        .expect("CLOSE ends")
        .0;
    body.lines()
        .filter_map(|l| l.trim().trim_end_matches(',').split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.parse().expect("a close code")))
        .collect()
}

/// One TS interface: field → (optional, type).
type Fields = BTreeMap<String, (bool, String)>;

/// The interfaces of a union type, keyed by their `type` literal.
fn ts_union(name: &str) -> BTreeMap<String, Fields> {
    let decl = TS
        .split_once(&format!("export type {name} ="))
        .unwrap_or_else(|| panic!("protocol.ts has no type {name}"))
        .1;
    let decl = decl.split("\n\n").next().unwrap();
    let mut out = BTreeMap::new();
    for member in decl.split('|').map(str::trim).filter(|m| !m.is_empty()) {
        if TS.contains(&format!("export type {member} =")) {
            out.extend(ts_union(member));
            continue;
        }
        let fields = ts_interface(member);
        let (_, kind) = fields.get("type").expect("a `type` field");
        let kind = kind.trim_matches('\'').to_owned();
        out.insert(kind, fields);
    }
    out
}

fn ts_interface(name: &str) -> Fields {
    let body = TS
        .split_once(&format!("export interface {name} {{\n"))
        .unwrap_or_else(|| panic!("protocol.ts has no interface {name}"))
        .1
        .split_once("\n}")
        .unwrap()
        .0;
    body.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//") && !l.starts_with("/*"))
        .map(|l| {
            let (name, ty) = l.split_once(": ").unwrap_or_else(|| panic!("a field: {l}"));
            let optional = name.ends_with('?');
            (
                name.trim_end_matches('?').to_owned(),
                (optional, ty.to_owned()),
            )
        })
        .collect()
}

/// Whether a TS type admits the JSON value `v` (the types this file uses).
fn admits(ty: &str, v: &Value) -> bool {
    ty.split(" | ").any(|t| match t {
        "unknown" => true,
        "string" => v.is_string(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "Record<string, number>" => v
            .as_object()
            .is_some_and(|o| o.values().all(Value::is_number)),
        "Record<string, unknown>" => v.is_object(),
        "{ userId: string }" => v
            .as_object()
            .is_some_and(|o| o.len() == 1 && o["userId"].is_string()),
        lit if lit.starts_with('\'') => v.as_str() == Some(lit.trim_matches('\'')),
        other => panic!("protocol_ts.rs does not know the TS type {other}"),
    })
}

fn object(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(o) => o,
        other => panic!("not an object: {other}"),
    }
}

/// Checks one message: `full` has every field set, `minimal` every optional one left out
/// (server messages) or is `None` (client messages, whose optional fields are found by
/// leaving each out and decoding).
fn check(kind: &str, ts: &Fields, full: &Value, minimal: Option<&Value>) {
    let full = object(full.clone());
    let keys: BTreeSet<&String> = full.keys().collect();
    let ts_keys: BTreeSet<&String> = ts.keys().collect();
    assert_eq!(
        keys, ts_keys,
        "{kind}: fields differ between Rust and protocol.ts"
    );
    for (field, value) in &full {
        let (optional, ty) = &ts[field];
        assert!(admits(ty, value), "{kind}.{field}: {value} is not a {ty}");
        let absent_ok = match minimal {
            Some(min) => {
                let min = min.as_object().unwrap();
                if let Some(v) = min.get(field) {
                    assert!(admits(ty, v), "{kind}.{field}: {v} is not a {ty}");
                }
                !min.contains_key(field)
            }
            None => {
                let mut without = full.clone();
                without.remove(field);
                field != "type"
                    && matches!(
                        ClientMsg::decode(&Value::Object(without).to_string()),
                        Ok(Some(_))
                    )
            }
        };
        assert_eq!(
            *optional, absent_ok,
            "{kind}.{field}: optional in protocol.ts should be {absent_ok}"
        );
    }
}

/// One of each message. A new variant fails to compile in `named` until it is listed here.
fn server_messages() -> Vec<(ServerMsg, ServerMsg)> {
    let error = |request_id, problems| ServerMsg::Error {
        code: "read-only".into(),
        message: "no".into(),
        request_id,
        problems,
    };
    let accepted = |rerun_of| ServerMsg::ExecutionAccepted {
        execution_id: "e".into(),
        created: true,
        rerun_of,
        request_id: Some(json!(1)),
    };
    vec![
        (error(Some(json!("r")), Some(json!([]))), error(None, None)),
        (
            ServerMsg::Pong { id: json!(1) },
            ServerMsg::Pong { id: Value::Null },
        ),
        (
            ServerMsg::Auth {
                status: "ok".into(),
                expires_at: Some(5),
            },
            ServerMsg::Auth {
                status: "ok".into(),
                expires_at: None,
            },
        ),
        (
            ServerMsg::Access {
                role: "viewer".into(),
                read_only: true,
            },
            ServerMsg::Access {
                role: "owner".into(),
                read_only: false,
            },
        ),
        (
            ServerMsg::Broadcast {
                event: RawJson::new(&json!({"a": 1})),
                from: Sender {
                    user_id: "u".into(),
                },
            },
            ServerMsg::Broadcast {
                event: RawJson::new(&Value::Null),
                from: Sender {
                    user_id: "u".into(),
                },
            },
        ),
        (accepted(Some("d".into())), accepted(None)),
        (
            ServerMsg::ExecutionCancelling {
                execution_id: "e".into(),
                request_id: Some(json!(1)),
            },
            ServerMsg::ExecutionCancelling {
                execution_id: "e".into(),
                request_id: None,
            },
        ),
        (
            ServerMsg::ExecutionDecided {
                execution_id: "e".into(),
                block_id: "b".into(),
                request_id: Some(json!(1)),
            },
            ServerMsg::ExecutionDecided {
                execution_id: "e".into(),
                block_id: "b".into(),
                request_id: None,
            },
        ),
    ]
}

fn client_messages() -> Vec<ClientMsg> {
    let id = Some(json!("r1"));
    vec![
        ClientMsg::Connection(ConnectionMsg::Auth {
            token: Some("t".into()),
        }),
        ClientMsg::Connection(ConnectionMsg::Ping { id: json!(1) }),
        ClientMsg::Connection(ConnectionMsg::Broadcast {
            event: json!({"a": 1}),
        }),
        ClientMsg::Execution(ExecutionRequest::Start {
            input: Some(json!({"x": 1})),
            priority: Some("speed".into()),
            idempotency_key: Some("k".into()),
            max_concurrency: Some(2),
            request_id: id.clone(),
        }),
        ClientMsg::Execution(ExecutionRequest::Cancel {
            execution_id: "e".into(),
            request_id: id.clone(),
        }),
        ClientMsg::Execution(ExecutionRequest::Decide {
            execution_id: "e".into(),
            block_id: "b".into(),
            approved: true,
            comment: Some("ok".into()),
            request_id: id.clone(),
        }),
        ClientMsg::Execution(ExecutionRequest::Rerun {
            execution_id: "e".into(),
            from_block: Some("b".into()),
            document: Some("live".into()),
            idempotency_key: Some("k".into()),
            request_id: id.clone(),
        }),
        ClientMsg::Execution(ExecutionRequest::Resume {
            after: [("e".to_owned(), 3)].into(),
            running: false,
            request_id: id,
        }),
    ]
}

/// Fails to compile when a variant is added, so the list above stays complete.
fn named_server(server: &ServerMsg) {
    match server {
        ServerMsg::Error { .. }
        | ServerMsg::Pong { .. }
        | ServerMsg::Auth { .. }
        | ServerMsg::Access { .. }
        | ServerMsg::Broadcast { .. }
        | ServerMsg::ExecutionAccepted { .. }
        | ServerMsg::ExecutionCancelling { .. }
        | ServerMsg::ExecutionDecided { .. } => {}
    }
}

/// Fails to compile when a variant is added, so the list above stays complete.
fn named_client(client: &ClientMsg) {
    match client {
        ClientMsg::Connection(
            ConnectionMsg::Auth { .. }
            | ConnectionMsg::Ping { .. }
            | ConnectionMsg::Broadcast { .. },
        )
        | ClientMsg::Execution(
            ExecutionRequest::Start { .. }
            | ExecutionRequest::Cancel { .. }
            | ExecutionRequest::Decide { .. }
            | ExecutionRequest::Rerun { .. }
            | ExecutionRequest::Resume { .. },
        ) => {}
    }
}

#[test]
fn server_messages_match_protocol_ts() {
    let ts = ts_union("ServerMsg");
    let msgs = server_messages();
    let mut seen = BTreeSet::new();
    for (full, minimal) in &msgs {
        named_server(full);
        let full: Value = serde_json::from_str(&full.to_json()).unwrap();
        let minimal: Value = serde_json::from_str(&minimal.to_json()).unwrap();
        let kind = full["type"].as_str().unwrap().to_owned();
        let fields = ts
            .get(&kind)
            .unwrap_or_else(|| panic!("protocol.ts's ServerMsg has no `{kind}`"));
        check(&kind, fields, &full, Some(&minimal));
        seen.insert(kind);
    }
    assert_eq!(
        seen,
        ts.keys().cloned().collect(),
        "ServerMsg types differ between Rust and protocol.ts"
    );
}

#[test]
fn client_messages_match_protocol_ts() {
    let ts = ts_union("ClientMsg");
    let mut seen = BTreeSet::new();
    for msg in client_messages() {
        named_client(&msg);
        let full = serde_json::to_value(&msg).unwrap();
        // What the server decodes is what was sent.
        assert_eq!(ClientMsg::decode(&full.to_string()), Ok(Some(msg)));
        let kind = full["type"].as_str().unwrap().to_owned();
        let fields = ts
            .get(&kind)
            .unwrap_or_else(|| panic!("protocol.ts's ClientMsg has no `{kind}`"));
        check(&kind, fields, &full, None);
        seen.insert(kind);
    }
    assert_eq!(
        seen,
        ts.keys().cloned().collect(),
        "ClientMsg types differ between Rust and protocol.ts"
    );
}

#[test]
fn constants_match_protocol_ts() {
    use resonant_protocol as p;
    let want: BTreeMap<String, i64> = [
        ("MSG_SYNC", p::MSG_SYNC as i64),
        ("MSG_AWARENESS", p::MSG_AWARENESS as i64),
        ("MSG_AUTH", p::MSG_AUTH as i64),
        ("MSG_QUERY_AWARENESS", p::MSG_QUERY_AWARENESS as i64),
        ("MSG_STATELESS", p::MSG_STATELESS as i64),
        ("MSG_SYNC_STATUS", p::MSG_SYNC_STATUS as i64),
        ("SYNC_STEP1", p::SYNC_STEP1 as i64),
        ("SYNC_STEP2", p::SYNC_STEP2 as i64),
        ("SYNC_UPDATE", p::SYNC_UPDATE as i64),
        ("MAX_STATELESS_BYTES", p::MAX_STATELESS_BYTES as i64),
        ("MAX_BROADCAST_BYTES", p::MAX_BROADCAST_BYTES as i64),
        ("MAX_RESUME", p::MAX_RESUME as i64),
        (
            "MAX_DECISION_COMMENT_CHARS",
            p::MAX_DECISION_COMMENT_CHARS as i64,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(ts_consts(), want);
    let codes: BTreeMap<String, i64> = close_code::ALL
        .iter()
        .map(|(name, code)| (name.to_string(), i64::from(*code)))
        .collect();
    assert_eq!(ts_close_codes(), codes);
}
