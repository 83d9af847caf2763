//! `embed_migrations!` reads the migrations directory at compile time; without this, cargo does
//! not notice a new migration and payd keeps embedding the old set.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
