//! Shared build script of every Rosetta crate.
//!
//! 1. Embeds an rpath to the libtorch that torch-sys linked, so tests, examples and benches find
//!    `libtorch.so` at run time without `LD_LIBRARY_PATH`.
//! 2. Records that libtorch's version and directory as `ROSETTA_LIBTORCH_VERSION` / `ROSETTA_LIBTORCH_LIB`
//!    for `rosetta_model_hooks::device::libtorch_info` (tch exposes no version query).
//!
//! 3. In the facade crate (`links = "rosetta"`), republishes that directory as metadata `libtorch_lib`, so a
//!    crate that depends on `rosetta` reads it as `DEP_ROSETTA_LIBTORCH_LIB` in its own build script and
//!    embeds the same rpath (README, "Using the crates"; `tests/downstream/build.rs`).
//!
//! torch-sys (`links = "tch"`) publishes its library directory as `DEP_TCH_LIBTORCH_LIB` to crates that
//! depend on it directly; `rustc-link-arg` applies to this package's own binaries, tests and examples
//! only, never to a dependent's: hence 3.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:rustc-env=ROSETTA_LIBTORCH_VERSION=unknown");
        println!("cargo:rustc-env=ROSETTA_LIBTORCH_LIB=unknown");
        return;
    };
    if cfg!(target_os = "linux") || cfg!(target_os = "macos") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    if std::env::var_os("CARGO_MANIFEST_LINKS").is_some() {
        println!("cargo:libtorch_lib={dir}");
    }
    let root = Path::new(&dir).parent().unwrap_or(Path::new(&dir));
    // A PyTorch wheel has `version.py` (`__version__ = '2.13.0+cu130'`); a libtorch zip has `build-version`.
    let version = std::fs::read_to_string(root.join("version.py"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("__version__ = "))
                .map(|v| v.trim().trim_matches('\'').trim_matches('"').to_string())
        })
        .or_else(|| {
            std::fs::read_to_string(root.join("build-version"))
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=ROSETTA_LIBTORCH_VERSION={version}");
    println!("cargo:rustc-env=ROSETTA_LIBTORCH_LIB={dir}");
}
