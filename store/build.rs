//! `sqlx::migrate!` embeds `migrations/` at compile time; this makes cargo
//! rebuild the crate when only a migration changed.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
