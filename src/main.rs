//! `sync-server`: reads the configuration from the environment, sets up
//! logging and runs the event loop until SIGTERM or SIGINT.
//!
//! `sync-server healthcheck` instead probes `/health` on the configured
//! port and exits 0 or 1 (for container health checks without a shell).

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        None => {}
        Some("healthcheck") => {
            return ExitCode::from(sync_server::ops::healthcheck::run_from_env() as u8)
        }
        Some("--version" | "-V") => {
            println!("sync-server {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some("--help" | "-h") => {
            println!(
                "sync-server {}\n\nUsage:\n  sync-server              run the server (configured by environment variables)\n  sync-server healthcheck  exit 0 if GET /health on HOST:PORT answers healthy\n\nSee README.md for the environment variables.",
                env!("CARGO_PKG_VERSION")
            );
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("sync-server: unknown argument {other:?} (try --help)");
            return ExitCode::from(2);
        }
    }

    tune_allocator();
    let cfg = match sync_server::config::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sync-server: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let log_cfg = simplelog::ConfigBuilder::new()
        .set_target_level(simplelog::LevelFilter::Off)
        .set_thread_level(simplelog::LevelFilter::Off)
        .add_filter_ignore_str("mongodb")
        .add_filter_ignore_str("hickory")
        .add_filter_ignore_str("rustls")
        .build();
    match cfg.ops.log_format {
        sync_server::ops::LogFormat::Text => {
            let _ = simplelog::WriteLogger::init(cfg.log_level, log_cfg, std::io::stderr());
        }
        sync_server::ops::LogFormat::Json => {
            let _ = sync_server::ops::logjson::init(cfg.log_level);
        }
    }

    let inherited = match sync_server::ops::notify::inherited_listener() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sync-server: cannot use the socket handed over: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = match inherited {
        Some(listener) => sync_server::shell::Server::on(listener, cfg.clone()),
        None => sync_server::shell::Server::bind(cfg.clone()),
    };
    let server = match started {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot start on {}:{}: {e}", cfg.host, cfg.port);
            eprintln!(
                "sync-server: cannot start on {}:{}: {e}",
                cfg.host, cfg.port
            );
            return ExitCode::FAILURE;
        }
    };
    log::info!(
        "listening on {} (accounts {})",
        server.local_addr(),
        if cfg.accounts.is_some() {
            "enabled"
        } else {
            "disabled"
        }
    );
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("event loop failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Makes freed memory go back to the system promptly.
///
/// glibc raises its mmap threshold each time a large block is freed, so
/// after one 10 MiB document later large buffers come from the heap and stay
/// resident after use. A fixed threshold keeps every large buffer (documents,
/// big frames) in its own mapping that `free` returns at once; fewer arenas
/// keep the worker threads from each holding a heap of their own.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
