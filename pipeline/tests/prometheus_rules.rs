//! The Prometheus alerting rules shipped in `deploy/prometheus/` (watermark lag, future and late
//! events, keys over the cap) are valid, and fire as their tests say, under `promtool` (Debian's
//! `prometheus` package; `.ci/run` installs it).

use std::path::Path;
use std::process::Command;

#[test]
fn the_shipped_alerting_rules_pass_promtool_and_their_tests() {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    let run = |args: &[&str]| {
        Command::new("promtool")
            .args(args)
            .current_dir(&directory)
            .output()
    };
    let checked = match run(&["check", "rules", "alerts.yml"]) {
        Ok(output) => output,
        Err(error) => {
            engine::testing::missing("promtool", format!("{error}; apt-get install prometheus"));
            return;
        }
    };
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stdout)
    );
    let tested = run(&["test", "rules", "alerts_test.yml"]).unwrap();
    assert!(
        tested.status.success(),
        "{}{}",
        String::from_utf8_lossy(&tested.stdout),
        String::from_utf8_lossy(&tested.stderr)
    );
}
