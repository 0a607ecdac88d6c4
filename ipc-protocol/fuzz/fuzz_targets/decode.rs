//! Every decoder of the protocol over arbitrary bytes: must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ipc_protocol::decode_everything(data);
});
