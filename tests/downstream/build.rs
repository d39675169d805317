//! The one build step a binary that uses Rosetta needs: an rpath to the libtorch that tch linked, so the
//! binary finds `libtorch.so` at run time without `LD_LIBRARY_PATH`. The `rosetta` crate publishes that
//! directory (`links = "rosetta"`, metadata `libtorch_lib`) to crates that depend on it directly.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_ROSETTA_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_ROSETTA_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
