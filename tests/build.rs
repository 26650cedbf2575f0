//! Says how to run the end-to-end tests when a plain `cargo test` leaves them out.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_E2E").is_none() {
        println!(
            "cargo::warning=end-to-end tests not built: run `deploy/local/test.sh` (starts the \
             local servers), or `cargo test -p prism-e2e --features e2e` with them running"
        );
    }
}
