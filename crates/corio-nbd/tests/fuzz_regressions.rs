//! Replays every input in `tests/fuzz_regressions/` (crashes the fuzzer
//! once found, and hand-made tricky cases) through the fuzz target's checks.

use std::fs;
use std::path::Path;

#[test]
fn fuzz_regressions_replay() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut n = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let data = fs::read(&path).unwrap();
        corio_nbd::proto::fuzzing::check_decoders(&data);
        n += 1;
    }
    assert!(n > 0, "no inputs in {}", dir.display());
}
