//! Templates with `{slot}` placeholders filled from vocabularies, and a balanced seeded sample of their
//! expansions (internal to the generators).

use std::collections::HashSet;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// Named word lists: `(slot, values)`.
pub(crate) type Vocab = &'static [(&'static str, &'static [&'static str])];

/// The slot names of a template, in order (`"Explain {a} to {b}."` -> `["a", "b"]`).
pub(crate) fn slots(template: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed `{{` in template {template:?}"))?;
        out.push(&after[..close]);
        rest = &after[close + 1..];
    }
    Ok(out)
}

/// Every expansion of a template, in a fixed order (the cartesian product of its slots' values).
pub(crate) fn expand(template: &str, vocab: Vocab) -> Result<Vec<String>, String> {
    let names = slots(template)?;
    let mut lists = Vec::with_capacity(names.len());
    for name in &names {
        let list = vocab
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| format!("template {template:?} names unknown slot {{{name}}}"))?;
        lists.push(list);
    }
    let mut out = vec![template.to_string()];
    for (name, list) in names.iter().zip(lists) {
        let pat = format!("{{{name}}}");
        out = out
            .iter()
            .flat_map(|t| list.iter().map(|v| t.replacen(&pat, v, 1)))
            .collect();
    }
    Ok(out)
}

/// Interleave shuffled pools so every pool contributes about equally: each round visits the pools in a
/// fresh random order and takes each one's next item; items whose key was already taken are skipped.
/// Stops after `n` items (or when every pool is exhausted).
pub(crate) fn balanced_sample<T>(
    mut pools: Vec<Vec<T>>,
    n: usize,
    rng: &mut StdRng,
    key: impl Fn(&T) -> String,
) -> Vec<T> {
    for p in &mut pools {
        p.shuffle(rng);
    }
    let mut iters: Vec<std::vec::IntoIter<T>> = pools.into_iter().map(Vec::into_iter).collect();
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n);
    let mut order: Vec<usize> = (0..iters.len()).collect();
    while out.len() < n {
        order.shuffle(rng);
        let mut any = false;
        for &i in &order {
            if out.len() == n {
                break;
            }
            for item in iters[i].by_ref() {
                if seen.insert(key(&item)) {
                    out.push(item);
                    any = true;
                    break;
                }
            }
        }
        if !any {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const V: Vocab = &[("a", &["1", "2"]), ("b", &["x", "y", "z"])];

    #[test]
    fn expands_the_product() {
        let e = expand("{a}-{b}", V).unwrap();
        assert_eq!(e.len(), 6);
        assert_eq!(e[0], "1-x");
        assert!(expand("{c}", V).is_err());
        assert!(expand("{a", V).is_err());
    }

    #[test]
    fn balanced_sample_is_distinct_and_balanced() {
        let mut rng = StdRng::seed_from_u64(1);
        let pools = vec![vec![1, 2, 3, 4], vec![10, 20], vec![1, 100]];
        let s = balanced_sample(pools, 6, &mut rng, |x| x.to_string());
        assert_eq!(s.len(), 6);
        let set: HashSet<_> = s.iter().collect();
        assert_eq!(set.len(), 6);
    }
}
