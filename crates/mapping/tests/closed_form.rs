//! Closed-form fits (ridge, Procrustes) and the metrics, against independent formulas.

mod common;

use common::*;
use rosetta_mapping::*;
use tch::{Device, Kind, Tensor};

fn affine_data(n: i64, d_src: i64, d_tgt: i64, noise: f64) -> (Tensor, Tensor, Tensor, Tensor) {
    tch::manual_seed(1);
    let o = (Kind::Double, Device::Cpu);
    // Large common offset, as residual streams have: the fit must not lose precision to it.
    let x = Tensor::randn([n, d_src], o) * 3.0 + 20.0;
    let a = Tensor::randn([d_tgt, d_src], o) / (d_src as f64).sqrt();
    let b = Tensor::randn([d_tgt], o) * 5.0;
    let y = x.matmul(&a.tr()) + &b + Tensor::randn([n, d_tgt], o) * noise;
    (x, y, a, b)
}

fn moments(x: &Tensor, y: &Tensor, precision: Precision, batch: i64) -> CrossMoments {
    let mut m = CrossMoments::new(x.size()[1], y.size()[1], precision, Device::Cpu).unwrap();
    let n = x.size()[0];
    let mut i = 0;
    while i < n {
        let len = batch.min(n - i);
        m.update(&x.narrow(0, i, len), &y.narrow(0, i, len))
            .unwrap();
        i += len;
    }
    assert_eq!(m.rows(), n as u64);
    m
}

#[test]
fn ridge_recovers_an_affine_map() {
    let _serial = serial();
    let (x, y, a, b) = affine_data(20_000, 32, 24, 0.0);
    let exact = RidgeOptions {
        alpha: 0.0,
        relative: false,
    };
    // (precision, data dtype, tolerance on A, on b); |b| ~ 5 and x has an offset of 20.
    for (precision, data_kind, tol_a, tol_b) in [
        (Precision::F64, Kind::Double, 1e-6, 1e-6),
        // f32 data (as stores hold), f32 batch products, f64 sums (the default).
        (Precision::F32, Kind::Float, 1e-6, 1e-5),
        (Precision::F64, Kind::Float, 1e-6, 1e-6),
    ] {
        let xk = x.to_kind(data_kind);
        let yk = xk.to_kind(Kind::Double).matmul(&a.tr()) + &b;
        let m = moments(&xk, &yk.to_kind(data_kind), precision, 4096);
        let fit = fit_ridge(&m, &exact, Device::Cpu).unwrap();
        assert_eq!(fit.kind(), MapKind::Ridge);
        let ea = max_diff(fit.weight(), &a);
        let eb = max_diff(fit.bias(), &b);
        println!("{precision:?} data {data_kind:?}: |A err| {ea:.2e}, |b err| {eb:.2e}");
        assert!(
            ea < tol_a && eb < tol_b,
            "{precision:?}/{data_kind:?}: A {ea:e}, b {eb:e}"
        );
    }
    let _ = y;
}

#[test]
fn ridge_matches_an_independent_regularised_solve() {
    let _serial = serial();
    let (x, y, _, _) = affine_data(3000, 12, 7, 0.5);
    let lambda = 40.0;
    let m = moments(&x, &y, Precision::F64, 1000);
    let fit = fit_ridge(
        &m,
        &RidgeOptions {
            alpha: lambda,
            relative: false,
        },
        Device::Cpu,
    )
    .unwrap();
    // Independent: centre, solve (XcᵀXc + λI) W = XcᵀYc with linalg_solve; b = ȳ - W x̄.
    let mx = x.mean_dim([0i64].as_slice(), true, Kind::Double);
    let my = y.mean_dim([0i64].as_slice(), true, Kind::Double);
    let xc = &x - &mx;
    let yc = &y - &my;
    let lhs = xc.tr().matmul(&xc) + Tensor::eye(12, (Kind::Double, Device::Cpu)) * lambda;
    let wt = Tensor::linalg_solve(&lhs, &xc.tr().matmul(&yc), true);
    let b = my.squeeze() - wt.tr().matmul(&mx.squeeze());
    assert!(max_diff(fit.weight(), &wt.tr()) < 1e-5);
    assert!(max_diff(fit.bias(), &b) < 1e-4);
}

#[test]
fn singular_system_without_penalty_is_a_clear_error() {
    let _serial = serial();
    // x has a constant column: its centred variance is exactly zero, so the system is singular in
    // floating point too (a duplicated column may pass Cholesky by rounding).
    let (x, y, _, _) = affine_data(500, 6, 3, 0.1);
    let x = Tensor::cat(&[x.shallow_clone(), x.narrow(1, 0, 1).ones_like() * 7.0], 1);
    let m = moments(&x, &y, Precision::F64, 500);
    let err = fit_ridge(
        &m,
        &RidgeOptions {
            alpha: 0.0,
            relative: false,
        },
        Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("not positive definite") && err.contains("alpha"),
        "{err}"
    );
    // With the default (relative) penalty it solves.
    fit_ridge(&m, &RidgeOptions::default(), Device::Cpu).unwrap();
    let one = CrossMoments::new(6, 3, Precision::F64, Device::Cpu).unwrap();
    assert!(fit_ridge(&one, &RidgeOptions::default(), Device::Cpu)
        .unwrap_err()
        .to_string()
        .contains("at least 2 rows"));
    let mut bad = CrossMoments::new(6, 3, Precision::F64, Device::Cpu).unwrap();
    assert!(bad
        .update(
            &Tensor::zeros([4, 5], (Kind::Float, Device::Cpu)),
            &Tensor::zeros([4, 3], (Kind::Float, Device::Cpu))
        )
        .is_err());
}

#[test]
fn procrustes_recovers_a_scaled_rotation() {
    let _serial = serial();
    tch::manual_seed(3);
    let o = (Kind::Double, Device::Cpu);
    let d = 16;
    let (q, _) = Tensor::linalg_qr(&Tensor::randn([d, d], o), "reduced");
    let x = Tensor::randn([4000, d], o) + 7.0;
    let b = Tensor::randn([d], o);
    let y = x.matmul(&q.tr()) * 2.5 + &b;
    let m = moments(&x, &y, Precision::F64, 1000);
    let fit = fit_procrustes(&m, &ProcrustesOptions { scaling: true }, Device::Cpu).unwrap();
    assert!(max_diff(fit.weight(), &(&q * 2.5)) < 1e-5);
    assert!(max_diff(fit.bias(), &b) < 1e-4);
    let unscaled = fit_procrustes(&m, &ProcrustesOptions { scaling: false }, Device::Cpu).unwrap();
    let w = unscaled.weight().to_kind(Kind::Double);
    // Orthogonal: WᵀW = I.
    assert!(max_diff(&w.tr().matmul(&w), &Tensor::eye(d, o)) < 1e-5);
    let m2 = moments(&x, &y.narrow(1, 0, 8), Precision::F64, 1000);
    assert!(
        fit_procrustes(&m2, &ProcrustesOptions::default(), Device::Cpu)
            .unwrap_err()
            .to_string()
            .contains("equal widths")
    );
}

#[test]
fn metrics_match_direct_formulas() {
    let _serial = serial();
    tch::manual_seed(5);
    let o = (Kind::Double, Device::Cpu);
    let y = Tensor::randn([50, 4], o) * Tensor::from_slice(&[1.0, 2.0, 0.5, 3.0]) + 1.0;
    let pred = &y + Tensor::randn([50, 4], o) * 0.3;
    let m = metrics(&pred, &y).unwrap();
    let yv: Vec<Vec<f64>> = Vec::try_from(&y).unwrap();
    let pv: Vec<Vec<f64>> = Vec::try_from(&pred).unwrap();
    let (n, d) = (50.0, 4usize);
    let mut sse = [0.0; 4];
    let mut mean = [0.0; 4];
    let mut cos = 0.0;
    for (yr, pr) in yv.iter().zip(&pv) {
        let (mut dot, mut ny, mut np) = (0.0, 0.0, 0.0);
        for j in 0..d {
            sse[j] += (pr[j] - yr[j]).powi(2);
            mean[j] += yr[j] / n;
            dot += pr[j] * yr[j];
            ny += yr[j] * yr[j];
            np += pr[j] * pr[j];
        }
        cos += dot / (ny.sqrt() * np.sqrt()) / n;
    }
    let mut sst = [0.0; 4];
    for yr in &yv {
        for j in 0..d {
            sst[j] += (yr[j] - mean[j]).powi(2);
        }
    }
    let mse = sse.iter().sum::<f64>() / (n * d as f64);
    let fvu = sse.iter().sum::<f64>() / sst.iter().sum::<f64>();
    let r2 = (0..d).map(|j| 1.0 - sse[j] / sst[j]).sum::<f64>() / d as f64;
    approx::assert_relative_eq!(m.mse, mse, max_relative = 1e-10);
    approx::assert_relative_eq!(m.cosine, cos, max_relative = 1e-10);
    approx::assert_relative_eq!(m.fvu, fvu, max_relative = 1e-9);
    approx::assert_relative_eq!(m.r2, r2, max_relative = 1e-9);
    assert_eq!(m.rows, 50);

    // Streaming in pieces gives the same figures.
    let mut acc = MetricsAccumulator::new(4);
    for i in 0..5 {
        acc.update(&pred.narrow(0, i * 10, 10), &y.narrow(0, i * 10, 10))
            .unwrap();
    }
    let s = acc.finish().unwrap();
    approx::assert_relative_eq!(s.fvu, m.fvu, max_relative = 1e-9);
    approx::assert_relative_eq!(s.r2, m.r2, max_relative = 1e-9);

    // The mean predictor explains nothing: FVU 1, R² 0.
    let mean_pred = y
        .mean_dim([0i64].as_slice(), true, Kind::Double)
        .expand([50, 4], false);
    let mm = metrics(&mean_pred, &y).unwrap();
    approx::assert_relative_eq!(mm.fvu, 1.0, max_relative = 1e-9);
    assert!(mm.r2.abs() < 1e-9);
    // Perfect prediction.
    let p = metrics(&y, &y).unwrap();
    assert!(
        p.mse == 0.0
            && p.fvu == 0.0
            && (p.cosine - 1.0).abs() < 1e-12
            && (p.r2 - 1.0).abs() < 1e-12
    );
    assert!(MetricsAccumulator::new(4).finish().is_err());
    assert!(metrics(&y.narrow(1, 0, 3), &y).is_err());
    assert_eq!(m.cosine_std, None, "no statistics given");

    // Standardised cosine: by hand with a given mean and std (one dim with std 0 is left unscaled).
    let mu = [0.5, -1.0, 2.0, 0.0];
    let sd = [2.0, 0.5, 10.0, 0.0];
    let mut acc = MetricsAccumulator::new(4)
        .with_standardization(&Tensor::from_slice(&mu), &Tensor::from_slice(&sd))
        .unwrap();
    for i in 0..5 {
        acc.update(&pred.narrow(0, i * 10, 10), &y.narrow(0, i * 10, 10))
            .unwrap();
    }
    let s = acc.finish().unwrap();
    let mut cos_std = 0.0;
    for (yr, pr) in yv.iter().zip(&pv) {
        let z = |v: &[f64]| -> Vec<f64> {
            (0..4)
                .map(|j| (v[j] - mu[j]) / if sd[j] > 0.0 { sd[j] } else { 1.0 })
                .collect()
        };
        let (a, b) = (z(pr), z(yr));
        let dot: f64 = a.iter().zip(&b).map(|(p, q)| p * q).sum();
        let na: f64 = a.iter().map(|v| v * v).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|v| v * v).sum::<f64>().sqrt();
        cos_std += dot / (na * nb) / 50.0;
    }
    approx::assert_relative_eq!(s.cosine_std.unwrap(), cos_std, max_relative = 1e-9);
    approx::assert_relative_eq!(s.fvu, m.fvu, max_relative = 1e-9);
    assert!(MetricsAccumulator::new(4)
        .with_standardization(&Tensor::from_slice(&mu[..3]), &Tensor::from_slice(&sd))
        .is_err());
}

#[test]
fn standardisation_folds_exactly_into_both_map_kinds() {
    let _serial = serial();
    tch::manual_seed(9);
    let o = (Kind::Float, Device::Cpu);
    let x = Tensor::randn([64, 10], o) * 4.0 + 3.0;
    let s = Standardization::new(
        &(0..10).map(|i| i as f64 * 0.3).collect::<Vec<_>>(),
        &(0..10).map(|i| 1.0 + i as f64).collect::<Vec<_>>(),
        &(0..6).map(|i| -(i as f64)).collect::<Vec<_>>(),
        &(0..6).map(|i| 0.5 + i as f64).collect::<Vec<_>>(),
    )
    .unwrap();
    let maps: Vec<AnyMap> = vec![
        Autoencoder::new(10, 6, None, AutoencoderInit::Default, Device::Cpu)
            .unwrap()
            .into(),
        Affine::new(10, 6, Device::Cpu).unwrap().into(),
    ];
    for m in maps {
        let _g = tch::no_grad_guard();
        // Map in standardised space, then undo the output standardisation by hand.
        let ys = m.forward(&s.standardize_x(&x).unwrap()).unwrap();
        let expected = ys.to_kind(Kind::Double) * &s.y_std + &s.y_mean;
        let folded = m.fold_standardization(&s).unwrap();
        let got = folded.forward(&x).unwrap();
        let err = max_diff(&got, &expected);
        assert!(err < 1e-4, "{}: {err}", m.kind());
    }
}

#[test]
fn map_construction_errors_are_clear() {
    let _serial = serial();
    assert_eq!(Autoencoder::default_hidden(896, 1536), 1173);
    assert_eq!(Autoencoder::default_hidden(2048, 3072), 2508);
    let e = Autoencoder::new(8, 6, None, AutoencoderInit::Identity, Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("d_src == d_tgt"), "{e}");
    assert!("mlp"
        .parse::<MapKind>()
        .unwrap_err()
        .to_string()
        .contains("autoencoder, affine"));
    let m = Affine::new(4, 3, Device::Cpu).unwrap();
    let e = m
        .forward(&Tensor::zeros([2, 5], (Kind::Float, Device::Cpu)))
        .unwrap_err();
    assert!(e.to_string().contains("[.., 4]"), "{e}");
    // Identity init is the identity when h >= 2d, and close to it otherwise on positive inputs.
    let _g = tch::no_grad_guard();
    let x = Tensor::randn([5, 4], (Kind::Float, Device::Cpu));
    let ae = Autoencoder::new(4, 4, Some(8), AutoencoderInit::Identity, Device::Cpu).unwrap();
    assert!(max_diff(&ae.forward(&x).unwrap(), &x) < 0.05);
}
