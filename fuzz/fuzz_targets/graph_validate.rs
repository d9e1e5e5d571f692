//! The engine's graph validation (`engine::validate`, what `POST /executions` and the socket's
//! run request call on a workflow's content) over arbitrary JSON: it must answer with a list
//! of problems or a plan, never panic, overflow the stack or allocate without bound.
//!
//! Input: JSON text (the seed corpus holds real workflows: loops, conditions, AI blocks).

#![no_main]

use std::sync::Once;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys's hook aborts on every panic, even one the server catches (minijinja's
    // lexer panics on a stray `}}`; `template::unpanicked` turns that into an error). A panic
    // that escapes `validate` still ends the run as a finding.
    static HOOK: Once = Once::new();
    HOOK.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    // serde_json's recursion limit (128) bounds what any request body can hold.
    let Ok(content) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let _ = resonant_engine::validate(&content);
});
