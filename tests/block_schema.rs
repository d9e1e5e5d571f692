//! The TypeScript SDK's `block-schema.ts` (block types, handles and config fields for the
//! editor's forms) against the server's own validation: a type, required field, enum value,
//! bound or default changed on one side and not the other fails here.

use resonant::engine::block::BlockKind;
use resonant::engine::graph::Problem;
use resonant::engine::retry::RetryPolicy;
use serde_json::{json, Map, Value};

const SCHEMA: &str = include_str!("../client-sdk/packages/client/src/block-schema.ts");

/// The id of the block under test in every workflow built here.
const B: &str = "b";

fn schema() -> Value {
    // The module's default export is a JSON object literal.
    let json = SCHEMA
        .split_once("export default ")
        .expect("block-schema.ts has a default export")
        .1;
    serde_json::from_str(json).expect("block-schema.ts exports a JSON object")
}

fn types(schema: &Value) -> &Map<String, Value> {
    schema["types"].as_object().expect("`types` is an object")
}

fn fields(def: &Value) -> &Map<String, Value> {
    def["fields"].as_object().expect("`fields` is an object")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("{v} is not an array"))
        .iter()
        .map(|s| s.as_str().expect("a string").to_owned())
        .collect()
}

fn example(def: &Value) -> Map<String, Value> {
    def["example"]
        .as_object()
        .expect("`example` is an object")
        .clone()
}

fn with(config: &Map<String, Value>, field: &str, value: Value) -> Map<String, Value> {
    let mut c = config.clone();
    c.insert(field.into(), value);
    c
}

fn edge(id: String, source: &str, handle: &str, target: &str, target_handle: &str) -> Value {
    let mut e = json!({ "id": id, "source": source, "target": target });
    // The default handle "" is a connection without a handle, as React Flow sends it.
    if !handle.is_empty() {
        e["sourceHandle"] = handle.into();
    }
    if !target_handle.is_empty() {
        e["targetHandle"] = target_handle.into();
    }
    e
}

/// input → the block (through its first input handle) → one output per output handle; a
/// `body` handle gets a one-block body that returns into the block's `next` handle.
fn workflow_through(
    kind: &str,
    def: &Value,
    config: &Map<String, Value>,
    outputs: &[String],
) -> Value {
    let inputs = strings(&def["handles"]["inputs"]);
    let mut blocks = vec![
        json!({ "id": "in", "type": "input", "config": {} }),
        json!({ "id": B, "type": kind, "config": config }),
    ];
    let mut connections = Vec::new();
    if let Some(first) = inputs.first() {
        connections.push(edge("to-b".into(), "in", "", B, first));
    }
    for (i, handle) in outputs.iter().enumerate() {
        if handle == "body" {
            assert!(
                inputs.iter().any(|h| h == "next"),
                "{kind}: a body returns through `next`"
            );
            blocks.push(json!({ "id": "inner", "type": "transform", "config": { "template": "{{ loop.item }}" } }));
            connections.push(edge("enter".into(), B, "body", "inner", ""));
            connections.push(edge("return".into(), "inner", "", B, "next"));
        } else {
            blocks.push(json!({ "id": format!("out{i}"), "type": "output", "config": {} }));
            connections.push(edge(
                format!("from-b-{i}"),
                B,
                handle,
                &format!("out{i}"),
                "",
            ));
        }
    }
    if outputs.is_empty() {
        blocks.push(json!({ "id": "end", "type": "output", "config": {} }));
        connections.push(edge("to-end".into(), "in", "", "end", ""));
    }
    json!({ "blocks": blocks, "connections": connections })
}

fn workflow(kind: &str, def: &Value, config: &Map<String, Value>) -> Value {
    workflow_through(kind, def, config, &strings(&def["handles"]["outputs"]))
}

fn validate(kind: &str, def: &Value, config: &Map<String, Value>) -> Result<(), Vec<Problem>> {
    resonant::engine::validate(&workflow(kind, def, config))
}

fn accepted(kind: &str, def: &Value, config: &Map<String, Value>, what: &str) {
    if let Err(problems) = validate(kind, def, config) {
        panic!("{kind}: {what} should be accepted: {config:?} → {problems:?}");
    }
}

/// Refused with a `bad-config` problem naming `field` on the block under test.
fn refused(kind: &str, def: &Value, config: &Map<String, Value>, field: &str, what: &str) {
    match validate(kind, def, config) {
        Ok(()) => panic!("{kind}: {what} should be refused: {config:?}"),
        Err(problems) => assert!(
            problems.iter().any(|p| matches!(p, Problem::BadConfig { block, field: f, .. } if block == B && f == field)),
            "{kind}: {what} should be a bad-config naming `{field}`: {problems:?}"
        ),
    }
}

/// Every field of every type, with the config field that carries it and how to set a value
/// of it: top-level fields and the common ones directly, the retry policy's inside `retry`
/// (whose problems name `retry`).
fn all_fields(schema: &Value) -> Vec<(String, String, Value, &'static str)> {
    let mut out = Vec::new();
    let common = schema["commonFields"]
        .as_object()
        .expect("`commonFields` is an object");
    for (kind, def) in types(schema) {
        for (name, field) in fields(def).iter().chain(common) {
            out.push((kind.clone(), name.clone(), field.clone(), ""));
            if field["kind"] == "retry" {
                for (inner, f) in fields(field) {
                    out.push((kind.clone(), inner.clone(), f.clone(), "retry"));
                }
            }
        }
    }
    out
}

/// The config with `value` set for `name` (inside `parent` when there is one).
fn set(base: &Map<String, Value>, parent: &str, name: &str, value: Value) -> Map<String, Value> {
    if parent.is_empty() {
        with(base, name, value)
    } else {
        with(base, parent, json!({ name: value }))
    }
}

#[test]
fn the_schema_is_well_formed() {
    let schema = schema();
    assert_eq!(schema["version"], 1);
    let kinds = [
        "template",
        "expression",
        "string",
        "number",
        "integer",
        "boolean",
        "enum",
        "stringArray",
        "object",
        "cases",
        "retry",
    ];
    for (kind, def) in types(&schema) {
        for key in ["label", "description"] {
            let text = def[key].as_str().unwrap_or_else(|| panic!("{kind}.{key}"));
            assert!(!text.is_empty() && !text.contains('\n'), "{kind}.{key}");
        }
        strings(&def["handles"]["inputs"]);
        strings(&def["handles"]["outputs"]);
    }
    for (kind, name, f, _) in all_fields(&schema) {
        let what = format!("{kind}.{name}");
        assert!(
            kinds.contains(&f["kind"].as_str().unwrap_or("")),
            "{what}: kind"
        );
        assert!(f["required"].is_boolean(), "{what}: required");
        assert!(
            f["label"].as_str().is_some_and(|l| !l.is_empty()),
            "{what}: label"
        );
        if f["kind"] == "enum" {
            assert!(!strings(&f["enum"]).is_empty(), "{what}: enum values");
        }
        for bound in ["min", "max", "exclusiveMin"] {
            assert!(f.get(bound).is_none_or(Value::is_number), "{what}: {bound}");
        }
    }
}

#[test]
fn the_types_are_the_servers_types() {
    let schema = schema();
    let ours: Vec<&str> = types(&schema).keys().map(String::as_str).collect();
    let mut servers: Vec<&str> = BlockKind::ALL.iter().map(|k| k.as_str()).collect();
    let mut sorted = ours.clone();
    sorted.sort();
    servers.sort();
    assert_eq!(sorted, servers, "block-schema.ts types vs BlockKind::ALL");
    for (kind, def) in types(&schema) {
        assert_eq!(
            BlockKind::parse(kind).map(BlockKind::as_str),
            Some(kind.as_str())
        );
        accepted(kind, def, &example(def), "its example");
    }
    // And a type the server does not know is refused as such.
    let def = &types(&schema)["transform"];
    let unknown = workflow("zzz-not-a-type", def, &Map::new());
    let problems = resonant::engine::validate(&unknown).unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, Problem::UnknownType { block, .. } if block == B)),
        "{problems:?}"
    );
}

#[test]
fn required_fields_are_required() {
    let schema = schema();
    let mut checked = 0;
    for (kind, def) in types(&schema) {
        for (name, f) in fields(def) {
            let mut config = example(def);
            if f["required"] != true {
                continue;
            }
            checked += 1;
            assert!(
                config.remove(name).is_some(),
                "{kind}: the example sets required `{name}`"
            );
            refused(
                kind,
                def,
                &config,
                name,
                &format!("a config without `{name}`"),
            );
            // A field required unless another is given: the other alone is enough.
            if let Some(other) = f["requiredUnless"].as_str() {
                let value = fields(def)[other]["example"].clone();
                let config = with(&config, other, value.clone());
                let mut outputs: Vec<String> = value
                    .as_array()
                    .expect("a cases example")
                    .iter()
                    .map(|c| c["handle"].as_str().expect("handle").to_owned())
                    .collect();
                outputs.extend(strings(&def["handles"]["casesOutputs"]));
                let wf = workflow_through(kind, def, &config, &outputs);
                if let Err(p) = resonant::engine::validate(&wf) {
                    panic!("{kind}: `{other}` instead of `{name}`: {p:?}");
                }
                // With cases, the plain outputs are not handles any more.
                let plain = strings(&def["handles"]["outputs"]);
                let wf = workflow_through(kind, def, &config, &plain);
                let problems = resonant::engine::validate(&wf).unwrap_err();
                assert!(
                    problems
                        .iter()
                        .all(|p| matches!(p, Problem::DanglingConnection { .. })),
                    "{problems:?}"
                );
            }
        }
        let unlisted = ["zzz-not-a-handle".to_string()];
        if kind == "condition" {
            let problems =
                resonant::engine::validate(&workflow_through(kind, def, &example(def), &unlisted));
            assert!(problems.is_err(), "a condition has only its listed handles");
        }
    }
    assert!(checked >= 5, "only {checked} required fields");
}

#[test]
fn enum_values_are_the_servers() {
    let schema = schema();
    let mut checked = 0;
    for (kind, name, f, parent) in all_fields(&schema) {
        let Some(values) = f.get("enum") else {
            continue;
        };
        checked += 1;
        let def = &types(&schema)[&kind];
        let base = example(def);
        let field = if parent.is_empty() { &name } else { parent };
        // An array field restricts its items; a plain one its value.
        let wrap = |v: Value| {
            if f["kind"] == "stringArray" {
                json!([v])
            } else {
                v
            }
        };
        for v in strings(values) {
            let config = set(&base, parent, &name, wrap(v.clone().into()));
            accepted(&kind, def, &config, &format!("{name} = {v}"));
        }
        let config = set(&base, parent, &name, wrap("zzz-not-a-value".into()));
        refused(
            &kind,
            def,
            &config,
            field,
            &format!("{name} = zzz-not-a-value"),
        );
    }
    // outputFormat ×2, join, onTimeout, method, retryOn: per type for the common ones.
    assert!(
        checked >= 5 + types(&schema).len(),
        "only {checked} enum fields"
    );
}

#[test]
fn bounds_are_the_servers() {
    let schema = schema();
    let mut checked = 0;
    for (kind, name, f, parent) in all_fields(&schema) {
        let def = &types(&schema)[&kind];
        let base = example(def);
        let field = if parent.is_empty() { &name } else { parent };
        let integer = f["kind"] == "integer";
        // Integers step by one; numbers by a little, so a bound moved by any real amount fails.
        let step = if integer { 1.0 } else { 1e-3 };
        let num = |x: f64| {
            if integer {
                json!(x as i64)
            } else {
                json!(x)
            }
        };
        let at = |x: f64| set(&base, parent, &name, num(x));
        if let Some(min) = f["min"].as_f64() {
            checked += 1;
            accepted(&kind, def, &at(min), &format!("{name} = min {min}"));
            refused(
                &kind,
                def,
                &at(min - step),
                field,
                &format!("{name} below min {min}"),
            );
        }
        if let Some(min) = f["exclusiveMin"].as_f64() {
            checked += 1;
            accepted(
                &kind,
                def,
                &at(min + step),
                &format!("{name} just above {min}"),
            );
            refused(
                &kind,
                def,
                &at(min),
                field,
                &format!("{name} = exclusive min {min}"),
            );
        }
        if let Some(max) = f["max"].as_f64() {
            checked += 1;
            accepted(&kind, def, &at(max), &format!("{name} = max {max}"));
            refused(
                &kind,
                def,
                &at(max + step),
                field,
                &format!("{name} above max {max}"),
            );
        }
        if integer {
            let x = f["min"].as_f64().unwrap_or(1.0) + 0.5;
            let config = set(&base, parent, &name, json!(x));
            refused(
                &kind,
                def,
                &config,
                field,
                &format!("{name} = {x}, not an integer"),
            );
        }
    }
    assert!(checked >= 10, "only {checked} bounds");
}

#[test]
fn defaults_are_valid_and_the_retry_defaults_are_the_servers() {
    let schema = schema();
    for (kind, def) in types(&schema) {
        // What an editor's "new block" holds: the example's required fields and every default.
        let mut config = example(def);
        for (name, f) in fields(def) {
            if let Some(d) = f.get("default") {
                config.entry(name.clone()).or_insert(d.clone());
                if let Some(values) = f.get("enum") {
                    assert!(
                        strings(values).contains(&d.as_str().unwrap().to_owned()),
                        "{kind}.{name}"
                    );
                }
            }
        }
        accepted(kind, def, &config, "the defaults");
    }
    let retry = &schema["commonFields"]["retry"];
    let defaults: Map<String, Value> = fields(retry)
        .iter()
        .filter_map(|(k, f)| f.get("default").map(|d| (k.clone(), d.clone())))
        .collect();
    let server = serde_json::to_value(RetryPolicy::default()).unwrap();
    for (k, v) in server.as_object().unwrap() {
        assert!(fields(retry).contains_key(k), "retry.{k} is missing");
        match (v.as_f64(), defaults.get(k)) {
            (Some(x), Some(d)) => assert_eq!(d.as_f64(), Some(x), "retry.{k} default"),
            (None, d) if v.is_null() => assert!(d.is_none(), "retry.{k} has no default"),
            (None, d) => assert_eq!(d, Some(v), "retry.{k} default"),
            (Some(_), None) => panic!("retry.{k} needs its default {v}"),
        }
    }
    let def = &types(&schema)["transform"];
    let config = with(&example(def), "retry", Value::Object(defaults));
    accepted("transform", def, &config, "the retry defaults");
}
