//! Rebuilds the server when a migration is added: `sqlx::migrate!` embeds the folder at
//! compile time, and cargo does not know it reads it.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
