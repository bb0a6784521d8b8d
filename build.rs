// The console's files are embedded at compile time (`include_dir!` in src/console/mod.rs); on
// stable Rust that macro cannot tell Cargo which files it read, so this says it instead: a
// change under console/ rebuilds the crate.
fn main() {
    println!("cargo:rerun-if-changed=console");
    println!("cargo:rerun-if-changed=build.rs");
}
