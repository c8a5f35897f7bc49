//! The `tessera` binary: `tessera_worker::cli`, plus `tessera loadtest` from
//! `tessera-loadtest` (a crate of its own, so the server library carries no
//! HTTP client).

fn main() {
    std::process::exit(tessera_worker::cli::main::<tessera_loadtest::Command>());
}
