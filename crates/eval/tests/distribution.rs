//! Distribution metrics on small hand-computed distributions, and the win rates.

use rosetta_eval::distribution::{
    kl_per_row, mva_win_rate, nll_per_token, perplexity, tvs_win_rate, win_rate, WinRate,
};
use rosetta_eval::EvalError;
use tch::{Device, Kind, Tensor};

fn logits(rows: &[&[f64]]) -> Tensor {
    let v = rows[0].len() as i64;
    let flat: Vec<f64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, v])
}

/// Logits whose softmax is `probs` (log-probabilities; `ln 0 = -inf`).
fn from_probs(rows: &[&[f64]]) -> Tensor {
    let lp: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| r.iter().map(|p| p.ln()).collect())
        .collect();
    let refs: Vec<&[f64]> = lp.iter().map(Vec::as_slice).collect();
    logits(&refs)
}

#[test]
fn kl_of_identical_rows_is_zero() {
    let a = logits(&[&[1.0, 2.0, 3.0], &[0.0, -1.0, 5.0]]);
    assert_eq!(kl_per_row(&a, &a).unwrap(), vec![0.0, 0.0]);
    // A constant shift of the logits is the same distribution.
    let b = &a + 7.5;
    for k in kl_per_row(&a, &b).unwrap() {
        assert!(k.abs() < 1e-12, "{k}");
    }
}

#[test]
fn kl_two_point_values() {
    // P = (1/2, 1/2), Q = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3).
    let p = from_probs(&[&[0.5, 0.5], &[0.9, 0.1]]);
    let q = from_probs(&[&[0.25, 0.75], &[0.5, 0.5]]);
    let kl = kl_per_row(&p, &q).unwrap();
    let want0 = 0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln();
    let want1 = 0.9 * (0.9f64 / 0.5).ln() + 0.1 * (0.1f64 / 0.5).ln();
    assert!((kl[0] - want0).abs() < 1e-14, "{} vs {want0}", kl[0]);
    assert!((kl[1] - want1).abs() < 1e-14, "{} vs {want1}", kl[1]);
    // Asymmetric.
    let back = kl_per_row(&q, &p).unwrap();
    let want_back = 0.25 * (0.5f64).ln() + 0.75 * (1.5f64).ln();
    assert!((back[0] - want_back).abs() < 1e-14);
}

#[test]
fn kl_with_minus_infinity_logits() {
    let inf = f64::NEG_INFINITY;
    // P puts no mass on token 2: that token contributes 0 even where Q is also 0 (no NaN).
    let p = logits(&[&[0.0, 0.0, inf], &[0.0, 0.0, inf]]);
    let q = logits(&[&[0.0, 0.0, inf], &[0.0, 0.0, 0.0]]);
    let kl = kl_per_row(&p, &q).unwrap();
    assert_eq!(kl[0], 0.0);
    // Row 1: P = (1/2, 1/2, 0), Q = (1/3, 1/3, 1/3): KL = ln(3/2).
    assert!((kl[1] - 1.5f64.ln()).abs() < 1e-14);
    // Q = 0 where P > 0: infinite.
    let kl = kl_per_row(&q, &p).unwrap();
    assert_eq!(kl[1], f64::INFINITY);
    // A row with no finite logit cannot be normalised.
    let dead = logits(&[&[inf, inf, inf]]);
    let ok = logits(&[&[0.0, 0.0, 0.0]]);
    assert!(matches!(kl_per_row(&dead, &ok), Err(EvalError::Invalid(_))));
    let nan = logits(&[&[0.0, f64::NAN, 0.0]]);
    assert!(matches!(kl_per_row(&ok, &nan), Err(EvalError::Invalid(_))));
}

#[test]
fn kl_is_non_negative_on_random_logits() {
    tch::manual_seed(0);
    for kind in [Kind::Float, Kind::Double, Kind::BFloat16] {
        let p = (Tensor::randn([64, 50], (Kind::Float, Device::Cpu)) * 3.0).to_kind(kind);
        let q = (Tensor::randn([64, 50], (Kind::Float, Device::Cpu)) * 3.0).to_kind(kind);
        // Nearly identical rows as well, where rounding could push the sum below 0.
        let q_close = (&p.to_kind(Kind::Double) + 1e-9).to_kind(kind);
        for other in [&q, &q_close] {
            let kl = kl_per_row(&p, other).unwrap();
            assert_eq!(kl.len(), 64);
            assert!(
                kl.iter().all(|&k| k >= 0.0 && k.is_finite()),
                "{kind:?}: {kl:?}"
            );
        }
    }
}

#[test]
fn kl_rejects_bad_shapes() {
    let a = logits(&[&[0.0, 1.0]]);
    let b = logits(&[&[0.0, 1.0, 2.0]]);
    assert!(matches!(kl_per_row(&a, &b), Err(EvalError::Shape(_))));
    let flat = Tensor::from_slice(&[0.0f64, 1.0]);
    assert!(matches!(kl_per_row(&flat, &flat), Err(EvalError::Shape(_))));
    let ints = Tensor::from_slice(&[0i64, 1]).view([1, 2]);
    assert!(matches!(kl_per_row(&ints, &ints), Err(EvalError::Shape(_))));
    let none = Tensor::zeros([0, 4], (Kind::Float, Device::Cpu));
    assert_eq!(kl_per_row(&none, &none).unwrap(), Vec::<f64>::new());
}

#[test]
fn perplexity_of_uniform_is_vocab_size() {
    for v in [2i64, 7, 1000] {
        let l = Tensor::zeros([5, v], (Kind::Float, Device::Cpu));
        let ids = Tensor::from_slice(&[0i64, 1, 1, 0, 1]);
        let ppl = perplexity(&l, &ids).unwrap();
        assert!((ppl - v as f64).abs() < 1e-9 * v as f64, "{v}: {ppl}");
    }
}

#[test]
fn nll_convention_position_t_predicts_t_plus_1() {
    // Position 0 is sure of token 1, position 1 is sure of token 2; position 2's logits are unused.
    let big = 50.0;
    let l = logits(&[&[0.0, big, 0.0], &[0.0, 0.0, big], &[big, 0.0, 0.0]]);
    let good = Tensor::from_slice(&[0i64, 1, 2]);
    let nll = nll_per_token(&l, &good).unwrap();
    assert_eq!(nll.len(), 2);
    assert!(nll.iter().all(|&x| x < 1e-15));
    // The same logits scoring token 0: -log softmax_0 = logsumexp(0, 50, 0) - 0 = ln(2 + e^50).
    let bad = Tensor::from_slice(&[0i64, 0, 0]);
    let nll = nll_per_token(&l, &bad).unwrap();
    let want = (2.0 + big.exp()).ln();
    assert!((nll[0] - want).abs() < 1e-9, "{} vs {want}", nll[0]);
    // Hand-computed two-token case: p(target) = 1/4 -> perplexity 4.
    let l = from_probs(&[&[0.25, 0.75], &[0.5, 0.5]]);
    let ids = Tensor::from_slice(&[1i64, 0]);
    assert!((perplexity(&l, &ids).unwrap() - 4.0).abs() < 1e-12);
    // i32 ids are accepted.
    let ids32 = Tensor::from_slice(&[1i32, 0]);
    assert!((perplexity(&l, &ids32).unwrap() - 4.0).abs() < 1e-12);
}

#[test]
fn perplexity_rejects_bad_input() {
    let l = Tensor::zeros([3, 4], (Kind::Float, Device::Cpu));
    let out_of_range = Tensor::from_slice(&[0i64, 4, 1]);
    assert!(matches!(
        perplexity(&l, &out_of_range),
        Err(EvalError::Invalid(_))
    ));
    let negative = Tensor::from_slice(&[0i64, -1, 1]);
    assert!(matches!(
        perplexity(&l, &negative),
        Err(EvalError::Invalid(_))
    ));
    let short = Tensor::from_slice(&[0i64, 1]);
    assert!(matches!(perplexity(&l, &short), Err(EvalError::Shape(_))));
    let float_ids = Tensor::from_slice(&[0.0f32, 1.0, 2.0]);
    assert!(matches!(
        perplexity(&l, &float_ids),
        Err(EvalError::Shape(_))
    ));
    let one = Tensor::zeros([1, 4], (Kind::Float, Device::Cpu));
    assert!(matches!(
        perplexity(&one, &Tensor::from_slice(&[0i64])),
        Err(EvalError::Empty(_))
    ));
}

#[test]
fn win_rates_count_ties_half() {
    let w = win_rate(&[1.0, 2.0, 3.0, 4.0], &[0.0, 2.0, 5.0, 1.0]).unwrap();
    assert_eq!(
        w,
        WinRate {
            wins: 2,
            ties: 1,
            losses: 1
        }
    );
    assert_eq!(w.total(), 4);
    assert_eq!(w.rate(), 2.5 / 4.0);

    let mva = mva_win_rate(&[0.9, 0.8], &[0.1, 0.8]).unwrap();
    assert_eq!(mva.rate(), 0.75);
    // TvS: mapped completion's similarity to the target's completion vs to the source's.
    let tvs = tvs_win_rate(&[0.7, 0.2, 0.5], &[0.3, 0.4, 0.1]).unwrap();
    assert_eq!(tvs.rate(), 2.0 / 3.0);

    assert!(matches!(win_rate(&[], &[]), Err(EvalError::Empty(_))));
    assert!(matches!(
        win_rate(&[1.0], &[1.0, 2.0]),
        Err(EvalError::LengthMismatch { .. })
    ));
    assert!(matches!(
        win_rate(&[f64::NAN], &[1.0]),
        Err(EvalError::Invalid(_))
    ));
    assert_eq!(WinRate::default().rate(), 0.0);
}
