//! The `tessera` binary; see `tessera_worker::cli`.

fn main() {
    std::process::exit(tessera_worker::cli::main());
}
