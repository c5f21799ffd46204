//! Fuzz both decoders through every phase; the checks live in
//! `corio_nbd::proto::fuzzing` so that `tests/fuzz_regressions.rs` replays
//! every crash found, forever.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| corio_nbd::proto::fuzzing::check_decoders(data));
