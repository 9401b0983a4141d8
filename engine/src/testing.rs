//! For the tests of every crate that need something outside the process (a broker, a database,
//! a browser, a Python package): one rule for what happens when it is missing. Under `CI=true`
//! the test fails, naming what is missing and how to provide it; elsewhere it is skipped with
//! that message on stderr.

/// Whether the tests run under CI (`CI=true`), where nothing they need may be missing.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true")
}

/// Reports that `what` is missing (`why`: the error, and how to provide it). Panics under CI;
/// elsewhere prints the skip and returns, so the caller returns from its test.
pub fn missing(what: &str, why: impl std::fmt::Display) {
    if under_ci() {
        panic!("{what} is required under CI: {why}");
    }
    eprintln!("skipped: {what} is not available ({why})");
}
