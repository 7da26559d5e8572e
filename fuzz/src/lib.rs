//! What the fuzz targets share.

use std::sync::Once;

/// libFuzzer's Rust harness aborts on *every* panic, from a panic hook, before anything can
/// catch it. mlinfra-data catches the panics of the arrow-rs decoders it calls (known upstream
/// bugs on malformed input) and returns `Error::DecoderPanic`: that is the behaviour under
/// test, not a crash. This replaces the hook with a silent one, so a contained panic is
/// caught as in production; a panic that escapes still reaches the harness's `catch_unwind`,
/// which aborts: a crash, as it should be.
///
/// With `MLINFRA_FUZZ_STRICT=1` the hook is left alone, so contained panics crash too: the
/// setting for hunting the upstream bugs themselves.
pub fn allow_contained_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("MLINFRA_FUZZ_STRICT").is_none() {
            std::panic::set_hook(Box::new(|_| {}));
        }
    });
}
