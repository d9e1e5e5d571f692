//! One client frame through the decoder, and any document update it carries through the
//! validator and then yrs, as a room would: nothing may panic, abort or allocate hugely
//! (run.sh sets libFuzzer's -malloc_limit_mb).

#![no_main]

use libfuzzer_sys::fuzz_target;
use resonant_sync::protocol::ClientMessage;
use resonant_sync::validate::validate_update_v1;
use yrs::updates::decoder::Decode;

/// What `Room::apply_update` does before integrating: validate, then decode.
fn decode_update(update: &[u8]) {
    if validate_update_v1(update).is_ok() {
        let _ = yrs::Update::decode_v1(update);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(ClientMessage::SyncStep2(update) | ClientMessage::Update(update)) =
        ClientMessage::decode(data)
    {
        decode_update(update);
    }
    // The raw input as an update body too, so mutations need not keep a frame header intact.
    decode_update(data);
});
