// sqlx::migrate! embeds /migrations at compile time, but on stable Rust it
// cannot tell cargo it read those files; without this an edited or added
// migration would silently not reach the binary until something else changed.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
