//! Runs files through a target without libFuzzer and prints each summary:
//! `cargo run --example replay -- <target> <file>...` (from tools/fuzz).
//! Handy for reading a crash artifact's story before turning it into a
//! regression file.

fn main() {
    let mut args = std::env::args().skip(1);
    let target = args.next().expect("usage: replay <target> <file>...");
    let run = sync_server_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("unknown target {target}"))
        .1;
    for path in args {
        let data = std::fs::read(&path).expect("readable file");
        println!("{path}: {}", run(&data));
    }
}
