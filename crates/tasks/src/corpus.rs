//! The other prompt files the crate ships, embedded: generic prompts for training maps
//! (`data/map_prompts.jsonl`, 426 benign instructions of 24 topics) and refusal-domain prompts for the
//! same purpose (`data/refusal_map.jsonl`, 200 harmful + 200 harmless, disjoint from the refusal
//! dataset). They carry no split: a map's store splits by document.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::jsonl::parse_jsonl;
use crate::rows::RefusalLabel;

/// The embedded `data/map_prompts.jsonl`.
pub const MAP_PROMPTS_JSONL: &str = include_str!("../data/map_prompts.jsonl");
/// The embedded `data/refusal_map.jsonl`.
pub const REFUSAL_MAP_JSONL: &str = include_str!("../data/refusal_map.jsonl");

/// One line of `map_prompts.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapPrompt {
    /// Unique id (`map-0001`, ...).
    pub id: String,
    /// Topic (`programming`, `recipe`, ...).
    pub topic: String,
    /// The instruction.
    pub instruction: String,
}

/// One line of `refusal_map.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefusalMapPrompt {
    /// Unique id (`rmap-harmful-001`, ...).
    pub id: String,
    /// Harmful or harmless.
    pub label: RefusalLabel,
    /// Topic category.
    pub category: String,
    /// The instruction.
    pub instruction: String,
}

/// The embedded map prompts.
pub fn map_prompts() -> Result<Vec<MapPrompt>> {
    parse_jsonl(MAP_PROMPTS_JSONL, "crates/tasks/data/map_prompts.jsonl")
}

/// The embedded refusal-domain map prompts.
pub fn refusal_map_prompts() -> Result<Vec<RefusalMapPrompt>> {
    parse_jsonl(REFUSAL_MAP_JSONL, "crates/tasks/data/refusal_map.jsonl")
}
