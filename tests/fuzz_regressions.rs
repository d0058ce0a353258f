//! Replays the fuzz corpora under plain `cargo test`, without the fuzzer.
//!
//! For every target in `tools/fuzz` this reads `tools/fuzz/corpus/<target>/`
//! (the committed seeds) and `tools/fuzz/regressions/<target>/` (every
//! crash or hang the fuzzer found, kept after the fix) and runs each file
//! through the target's own `run`, the same code the libFuzzer binary
//! calls: it asserts the target's invariants (see each module's docs) and
//! returns a summary. A file named `<expected>--<what>` must also produce a
//! summary whose first word is `<expected>`, so a seed pins down the
//! documented outcome (a status, a close code, the room population), not
//! merely the absence of a panic.

#[path = "../tools/fuzz/src/lib.rs"]
#[allow(dead_code)]
mod harness;

use std::path::{Path, PathBuf};

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.') && !n.ends_with(".md"))
        })
        .collect();
    files.sort();
    files
}

/// Runs every file of one folder kind (`corpus` or `regressions`) through
/// every target; returns how many files were replayed.
fn replay(kind: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tools/fuzz")
        .join(kind);
    let mut count = 0;
    let mut failures = Vec::new();
    for (target, run) in harness::TARGETS {
        for file in files_in(&root.join(target)) {
            let data = std::fs::read(&file).expect("readable corpus file");
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            let outcome = std::panic::catch_unwind(|| run(&data));
            count += 1;
            match outcome {
                Err(_) => failures.push(format!("{target}/{name}: panicked (see above)")),
                Ok(summary) => {
                    if let Some((expected, _)) = name.split_once("--") {
                        let first = summary.split_whitespace().next().unwrap_or_default();
                        if first != expected {
                            failures.push(format!(
                                "{target}/{name}: expected {expected:?}, got {summary:?}"
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} {kind} files failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    count
}

#[test]
fn seed_corpora_replay() {
    let n = replay("corpus");
    // Every target has seeds; an empty corpus would make this test vacuous.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/fuzz/corpus");
    for (target, _) in harness::TARGETS {
        assert!(
            !files_in(&root.join(target)).is_empty(),
            "no seeds for {target}"
        );
    }
    assert!(n >= harness::TARGETS.len());
}

#[test]
fn regressions_replay() {
    let n = replay("regressions");
    // Every target that drives the connection engine keeps its findings;
    // an empty or misplaced folder would make this test vacuous.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/fuzz/regressions");
    for target in ["http_stream", "ws_client_message"] {
        assert!(
            !files_in(&root.join(target)).is_empty(),
            "no regressions for {target}"
        );
    }
    assert!(n > 0, "no regression files replayed");
}
