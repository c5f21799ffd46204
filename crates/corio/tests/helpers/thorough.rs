//! One meaning of `CORIO_TEST_THOROUGH`, shared by corio's and corio-nbd's
//! test helpers (corio-nbd's include this file by path).

/// Whether the long ("thorough") variants run: `CORIO_TEST_THOROUGH=1`.
/// Unset or `0` means quick.
///
/// # Panics
/// On any other value, so that a typo does not silently run the quick mode.
pub fn thorough() -> bool {
    match std::env::var("CORIO_TEST_THOROUGH").as_deref() {
        Err(std::env::VarError::NotPresent) | Ok("0") => false,
        Ok("1") => true,
        other => {
            panic!("CORIO_TEST_THOROUGH must be unset, 0 (quick) or 1 (thorough), not {other:?}")
        }
    }
}

/// `quick` by default, `thorough` with `CORIO_TEST_THOROUGH=1`.
pub fn quick_or_thorough<T>(quick: T, thorough_value: T) -> T {
    if thorough() {
        thorough_value
    } else {
        quick
    }
}
