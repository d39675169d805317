//! The [`Mapping`] trait and its two parametric forms: [`Affine`] (one linear layer; also the result of the
//! closed-form [`crate::fit`]s) and [`Autoencoder`] (the paper's `Linear -> ReLU -> Linear`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{MappingError, Result};

/// Which kind of map, as recorded in the saved JSON (`"autoencoder"`, `"affine"`, `"ridge"`,
/// `"procrustes"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MapKind {
    /// `Linear(d_src, h) -> ReLU -> Linear(h, d_tgt)`, trained by gradient descent (the paper's map).
    Autoencoder,
    /// One `Linear(d_src, d_tgt)`, trained by gradient descent (the paper's linear baseline).
    Affine,
    /// Affine map fitted in closed form by ridge-regularised least squares.
    Ridge,
    /// Orthogonal (optionally scaled) map plus offset, fitted in closed form; `d_src == d_tgt`.
    Procrustes,
}

impl MapKind {
    /// All kinds, for help texts.
    pub const ALL: [MapKind; 4] = [
        MapKind::Autoencoder,
        MapKind::Affine,
        MapKind::Ridge,
        MapKind::Procrustes,
    ];

    /// Trained by the gradient-descent [`crate::Trainer`] (as opposed to fitted in closed form).
    pub fn is_trained(self) -> bool {
        matches!(self, MapKind::Autoencoder | MapKind::Affine)
    }

    /// The lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            MapKind::Autoencoder => "autoencoder",
            MapKind::Affine => "affine",
            MapKind::Ridge => "ridge",
            MapKind::Procrustes => "procrustes",
        }
    }
}

impl fmt::Display for MapKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MapKind {
    type Err = MappingError;
    fn from_str(s: &str) -> Result<Self> {
        MapKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                MappingError::Config(format!(
                    "unknown map kind {s:?} (expected one of: autoencoder, affine, ridge, procrustes)"
                ))
            })
    }
}

/// A map from one model's activation space to another's.
///
/// Implementations hold their parameters as f32 tensors on one device; [`Mapping::forward`] moves and
/// converts its input as needed and returns f32 on the map's device.
pub trait Mapping: Send {
    /// What kind of map this is.
    fn kind(&self) -> MapKind;
    /// Input width.
    fn d_src(&self) -> i64;
    /// Output width.
    fn d_tgt(&self) -> i64;
    /// Hidden width (autoencoders), `None` otherwise.
    fn hidden(&self) -> Option<i64> {
        None
    }
    /// Map activations: `x` `[.., d_src]` (any float dtype, any device) -> `[.., d_tgt]` f32 on the map's
    /// device. Records autograd history when the parameters require grad and grad mode is on.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    /// The parameters by name (`weight`, `bias` or `w1`, `b1`, `w2`, `b2`), for saving.
    fn named_tensors(&self) -> Vec<(String, Tensor)>;
    /// The trainable parameters (shallow clones sharing storage), in a fixed order.
    fn parameters(&self) -> Vec<Tensor> {
        self.named_tensors().into_iter().map(|(_, t)| t).collect()
    }
    /// The device the parameters live on.
    fn device(&self) -> Device;
    /// The same map expressed on unstandardised data: if `self` maps `(x - mx) / sx` to `(y - my) / sy`,
    /// the result maps `x` to `y` exactly (both layers are affine, so standardisation folds into them).
    fn fold_standardization(&self, s: &Standardization) -> Result<AnyMap>;
    /// A deep copy without autograd history (e.g. the best weights during training).
    fn detached_copy(&self) -> Result<AnyMap>;
    /// The MSE loss of `x` `[n, d_src]` against `y` `[n, d_tgt]` and its gradients with respect to
    /// [`Mapping::parameters`] (times `scale`), computed analytically without autograd; `None` when the
    /// map has no such path (the trainer then uses autograd). Same values as autograd to rounding, with
    /// fewer passes over the activations: the difference `ŷ - y` is formed in place in the output and is
    /// itself the scaled output gradient.
    fn mse_loss_and_grads(
        &self,
        _x: &Tensor,
        _y: &Tensor,
        _scale: f64,
    ) -> Result<Option<(Tensor, Vec<Tensor>)>> {
        Ok(None)
    }
}

/// `pred -= y` in place, then the MSE (0-dim) and `pred *= 2 scale / numel`: `pred` becomes the
/// gradient of `scale * MSE` with respect to the prediction.
fn mse_in_place(pred: &mut Tensor, y: &Tensor, scale: f64) -> Result<Tensor> {
    if pred.size() != y.size() {
        return Err(MappingError::Shape(format!(
            "prediction {:?} and target {:?}",
            pred.size(),
            y.size()
        )));
    }
    let _ = pred.f_sub_(&y.f_to_device(pred.device())?.f_to_kind(Kind::Float)?)?;
    let n = pred.numel() as f64;
    let flat = pred.f_view([-1])?;
    let loss = flat.f_dot(&flat)?.f_div_scalar(n)?;
    let _ = pred.f_mul_scalar_(2.0 * scale / n)?;
    Ok(loss)
}

fn sum_rows(t: &Tensor) -> Result<Tensor> {
    Ok(t.f_sum_dim_intlist([0i64].as_slice(), false, Kind::Float)?)
}

/// Per-dimension standardisation of inputs and outputs, from a store's running statistics
/// (`rosetta_activation_store::RunningStats`). Dimensions with zero variance get scale 1.
#[derive(Debug)]
pub struct Standardization {
    /// Source mean `[d_src]` (f64).
    pub x_mean: Tensor,
    /// Source standard deviation `[d_src]` (f64).
    pub x_std: Tensor,
    /// Target mean `[d_tgt]` (f64).
    pub y_mean: Tensor,
    /// Target standard deviation `[d_tgt]` (f64).
    pub y_std: Tensor,
}

impl Standardization {
    /// From per-dimension means and standard deviations (population), f64.
    pub fn new(x_mean: &[f64], x_std: &[f64], y_mean: &[f64], y_std: &[f64]) -> Result<Self> {
        if x_mean.len() != x_std.len() || y_mean.len() != y_std.len() {
            return Err(MappingError::Shape(format!(
                "standardisation: mean/std lengths differ (x {} vs {}, y {} vs {})",
                x_mean.len(),
                x_std.len(),
                y_mean.len(),
                y_std.len()
            )));
        }
        let fix = |s: &[f64]| -> Vec<f64> {
            s.iter()
                .map(|&v| if v.is_finite() && v > 1e-12 { v } else { 1.0 })
                .collect()
        };
        Ok(Self {
            x_mean: Tensor::from_slice(x_mean),
            x_std: Tensor::from_slice(&fix(x_std)),
            y_mean: Tensor::from_slice(y_mean),
            y_std: Tensor::from_slice(&fix(y_std)),
        })
    }

    /// From the store's statistics of `x` and `y`.
    pub fn from_stats(
        x: &rosetta_activation_store::RunningStats,
        y: &rosetta_activation_store::RunningStats,
    ) -> Result<Self> {
        Self::new(x.mean(), &x.std(), y.mean(), &y.std())
    }

    /// `(x - mean) / std` for source rows `[.., d_src]` (f32 out, on `x`'s device).
    pub fn standardize_x(&self, x: &Tensor) -> Result<Tensor> {
        standardize(x, &self.x_mean, &self.x_std)
    }

    /// `(y - mean) / std` for target rows `[.., d_tgt]` (f32 out, on `y`'s device).
    pub fn standardize_y(&self, y: &Tensor) -> Result<Tensor> {
        standardize(y, &self.y_mean, &self.y_std)
    }

    /// Standardisation moved to `device` as f32 (cached by the trainer for speed).
    pub(crate) fn on(&self, device: Device) -> Result<[Tensor; 4]> {
        let f = |t: &Tensor| t.f_to_kind(Kind::Float)?.f_to_device(device);
        Ok([
            f(&self.x_mean)?,
            f(&self.x_std)?,
            f(&self.y_mean)?,
            f(&self.y_std)?,
        ])
    }
}

fn standardize(v: &Tensor, mean: &Tensor, std: &Tensor) -> Result<Tensor> {
    let dev = v.device();
    let m = mean.f_to_kind(Kind::Float)?.f_to_device(dev)?;
    let s = std.f_to_kind(Kind::Float)?.f_to_device(dev)?;
    Ok(v.f_to_kind(Kind::Float)?.f_sub(&m)?.f_div(&s)?)
}

/// Fold an input standardisation into a linear layer: `w' x_std + b'` with `x_std = (x - m) / s` equals
/// `(w' / s) x + (b' - w' (m / s))`. Computed in f64.
fn fold_input(w: &Tensor, b: &Tensor, mean: &Tensor, std: &Tensor) -> Result<(Tensor, Tensor)> {
    let dev = w.device();
    let w64 = w.f_to_kind(Kind::Double)?;
    let b64 = b.f_to_kind(Kind::Double)?;
    let m = mean.f_to_kind(Kind::Double)?.f_to_device(dev)?;
    let s = std.f_to_kind(Kind::Double)?.f_to_device(dev)?;
    let w_new = w64.f_div(&s.f_unsqueeze(0)?)?;
    let b_new = b64.f_sub(&w64.f_matmul(&m.f_div(&s)?)?)?;
    Ok((w_new.f_to_kind(Kind::Float)?, b_new.f_to_kind(Kind::Float)?))
}

/// Fold an output de-standardisation into a linear layer: `s (w' x + b') + m`.
fn fold_output(w: &Tensor, b: &Tensor, mean: &Tensor, std: &Tensor) -> Result<(Tensor, Tensor)> {
    let dev = w.device();
    let m = mean.f_to_kind(Kind::Double)?.f_to_device(dev)?;
    let s = std.f_to_kind(Kind::Double)?.f_to_device(dev)?;
    let w_new = w.f_to_kind(Kind::Double)?.f_mul(&s.f_unsqueeze(1)?)?;
    let b_new = b.f_to_kind(Kind::Double)?.f_mul(&s)?.f_add(&m)?;
    Ok((w_new.f_to_kind(Kind::Float)?, b_new.f_to_kind(Kind::Float)?))
}

fn check_input(x: &Tensor, d_src: i64) -> Result<()> {
    match x.size().last() {
        Some(&d) if d == d_src => Ok(()),
        _ => Err(MappingError::Shape(format!(
            "map input has shape {:?}, expected [.., {d_src}]",
            x.size()
        ))),
    }
}

fn prepare(x: &Tensor, device: Device) -> Result<Tensor> {
    Ok(x.f_to_device(device)?.f_to_kind(Kind::Float)?)
}

/// PyTorch `nn.Linear`'s default initialisation: weight and bias uniform in `±1/sqrt(fan_in)`.
fn linear_init(d_in: i64, d_out: i64, device: Device) -> Result<(Tensor, Tensor)> {
    let bound = 1.0 / (d_in as f64).sqrt();
    let opts = (Kind::Float, device);
    let mut w = Tensor::f_empty([d_out, d_in], opts)?;
    let _ = w.f_uniform_(-bound, bound)?;
    let mut b = Tensor::f_empty([d_out], opts)?;
    let _ = b.f_uniform_(-bound, bound)?;
    Ok((w, b))
}

fn leaf(t: Tensor) -> Tensor {
    t.detach().set_requires_grad(true)
}

/// One linear layer `y = x W^T + b`: the paper's affine baseline ([`MapKind::Affine`]) and the form of every
/// closed-form fit ([`MapKind::Ridge`], [`MapKind::Procrustes`]).
#[derive(Debug)]
pub struct Affine {
    kind: MapKind,
    /// `[d_tgt, d_src]` (PyTorch `nn.Linear` layout).
    weight: Tensor,
    /// `[d_tgt]`.
    bias: Tensor,
}

impl Affine {
    /// A trainable affine map with `nn.Linear`'s default initialisation (seed it with
    /// `tch::manual_seed`).
    pub fn new(d_src: i64, d_tgt: i64, device: Device) -> Result<Self> {
        check_dims(d_src, d_tgt)?;
        let (w, b) = linear_init(d_src, d_tgt, device)?;
        Self::from_parts(MapKind::Affine, w, b)
    }

    /// The identity map (`d_src == d_tgt`), e.g. to start fine-tuning a base <-> fine-tuned map.
    pub fn identity(d: i64, device: Device) -> Result<Self> {
        check_dims(d, d)?;
        let w = Tensor::f_eye(d, (Kind::Float, device))?;
        let b = Tensor::f_zeros([d], (Kind::Float, device))?;
        Self::from_parts(MapKind::Affine, w, b)
    }

    /// From a weight `[d_tgt, d_src]` and bias `[d_tgt]` (converted to f32; made trainable leaves).
    pub fn from_parts(kind: MapKind, weight: Tensor, bias: Tensor) -> Result<Self> {
        if kind == MapKind::Autoencoder {
            return Err(MappingError::Config(
                "an affine map cannot be of kind autoencoder".into(),
            ));
        }
        let ws = weight.size();
        if ws.len() != 2 || bias.size() != [ws[0]] {
            return Err(MappingError::Shape(format!(
                "affine map: weight {:?} and bias {:?} (expected [d_tgt, d_src] and [d_tgt])",
                ws,
                bias.size()
            )));
        }
        let dev = weight.device();
        Ok(Self {
            kind,
            weight: leaf(weight.f_to_kind(Kind::Float)?),
            bias: leaf(bias.f_to_kind(Kind::Float)?.f_to_device(dev)?),
        })
    }

    /// The weight `[d_tgt, d_src]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `[d_tgt]`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }
}

impl Mapping for Affine {
    fn kind(&self) -> MapKind {
        self.kind
    }
    fn d_src(&self) -> i64 {
        self.weight.size()[1]
    }
    fn d_tgt(&self) -> i64 {
        self.weight.size()[0]
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        check_input(x, self.d_src())?;
        let x = prepare(x, self.weight.device())?;
        Ok(x.f_linear(&self.weight, Some(&self.bias))?)
    }
    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        vec![
            ("weight".into(), self.weight.shallow_clone()),
            ("bias".into(), self.bias.shallow_clone()),
        ]
    }
    fn device(&self) -> Device {
        self.weight.device()
    }
    fn fold_standardization(&self, s: &Standardization) -> Result<AnyMap> {
        let _g = tch::no_grad_guard();
        let (w, b) = fold_input(&self.weight, &self.bias, &s.x_mean, &s.x_std)?;
        let (w, b) = fold_output(&w, &b, &s.y_mean, &s.y_std)?;
        Ok(AnyMap::Affine(Affine::from_parts(self.kind, w, b)?))
    }
    fn mse_loss_and_grads(
        &self,
        x: &Tensor,
        y: &Tensor,
        scale: f64,
    ) -> Result<Option<(Tensor, Vec<Tensor>)>> {
        if x.dim() != 2 {
            return Ok(None);
        }
        check_input(x, self.d_src())?;
        let _g = tch::no_grad_guard();
        let x = prepare(x, self.weight.device())?;
        let mut g = x.f_linear(&self.weight, Some(&self.bias))?;
        let loss = mse_in_place(&mut g, y, scale)?;
        let dw = g.f_transpose(0, 1)?.f_mm(&x)?;
        Ok(Some((loss, vec![dw, sum_rows(&g)?])))
    }
    fn detached_copy(&self) -> Result<AnyMap> {
        let _g = tch::no_grad_guard();
        Ok(AnyMap::Affine(Affine::from_parts(
            self.kind,
            self.weight.detach().copy(),
            self.bias.detach().copy(),
        )?))
    }
}

/// How an [`Autoencoder`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoencoderInit {
    /// PyTorch `nn.Linear` default initialisation (the paper's).
    #[default]
    Default,
    /// Identity-like (`d_src == d_tgt`): with `h >= 2 d` the map starts as the exact identity
    /// (`W1 = [I; -I]`, `W2 = [I, -I]`, since `relu(x) - relu(-x) = x`); with a smaller `h` the first `h`
    /// coordinates pass through `relu` (`W1 = I_h`, `W2 = I_h^T`). Other entries start at 1e-3 x default.
    Identity,
}

/// The paper's map: `Linear(d_src, h) -> ReLU -> Linear(h, d_tgt)`, both with bias.
#[derive(Debug)]
pub struct Autoencoder {
    /// `[h, d_src]`.
    w1: Tensor,
    /// `[h]`.
    b1: Tensor,
    /// The second layer's weight stored transposed, `[h, d_tgt]` (`w2ᵀ`; [`Mapping::named_tensors`] shows it
    /// as `w2` `[d_tgt, h]`, PyTorch's layout). With it every matrix product of the training step runs in
    /// the layout MKL is fastest in (see [`Autoencoder::mse_loss_and_grads`]).
    w2t: Tensor,
    /// `[d_tgt]`.
    b2: Tensor,
}

impl Autoencoder {
    /// The paper's hidden width `floor(sqrt(d_src * d_tgt))` (896 -> 1536: 1173).
    pub fn default_hidden(d_src: i64, d_tgt: i64) -> i64 {
        ((d_src as f64) * (d_tgt as f64)).sqrt().floor() as i64
    }

    /// A trainable autoencoder with hidden width `hidden` (`None`: [`Autoencoder::default_hidden`]).
    /// Random initialisation draws from libtorch's generator (seed it with `tch::manual_seed`).
    pub fn new(
        d_src: i64,
        d_tgt: i64,
        hidden: Option<i64>,
        init: AutoencoderInit,
        device: Device,
    ) -> Result<Self> {
        check_dims(d_src, d_tgt)?;
        let h = hidden.unwrap_or_else(|| Self::default_hidden(d_src, d_tgt));
        if h <= 0 {
            return Err(MappingError::Config(format!(
                "autoencoder hidden width must be > 0, got {h}"
            )));
        }
        let (mut w1, mut b1) = linear_init(d_src, h, device)?;
        let (mut w2, mut b2) = linear_init(h, d_tgt, device)?;
        if init == AutoencoderInit::Identity {
            if d_src != d_tgt {
                return Err(MappingError::Config(format!(
                    "identity initialisation needs d_src == d_tgt (got {d_src} -> {d_tgt})"
                )));
            }
            let d = d_src;
            let opts = (Kind::Float, device);
            let small = |t: &Tensor| t.f_mul_scalar(1e-3);
            let (i1, i2) = if h >= 2 * d {
                let eye = Tensor::f_eye(d, opts)?;
                let pad1 = Tensor::f_zeros([h - 2 * d, d], opts)?;
                let w1i = Tensor::f_cat(&[eye.shallow_clone(), eye.f_neg()?, pad1], 0)?;
                let pad2 = Tensor::f_zeros([d, h - 2 * d], opts)?;
                let w2i = Tensor::f_cat(&[eye.shallow_clone(), eye.f_neg()?, pad2], 1)?;
                (w1i, w2i)
            } else {
                let w1i = Tensor::f_eye_m(h, d, opts)?;
                (w1i.shallow_clone(), w1i.f_transpose(0, 1)?.f_contiguous()?)
            };
            w1 = i1.f_add(&small(&w1)?)?;
            w2 = i2.f_add(&small(&w2)?)?;
            b1 = small(&b1)?;
            b2 = small(&b2)?;
        }
        Self::from_parts(w1, b1, w2, b2)
    }

    /// From `w1` `[h, d_src]`, `b1` `[h]`, `w2` `[d_tgt, h]`, `b2` `[d_tgt]`.
    pub fn from_parts(w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Result<Self> {
        let (s1, s2) = (w1.size(), w2.size());
        if s1.len() != 2
            || s2.len() != 2
            || b1.size() != [s1[0]]
            || s2[1] != s1[0]
            || b2.size() != [s2[0]]
        {
            return Err(MappingError::Shape(format!(
                "autoencoder: w1 {:?}, b1 {:?}, w2 {:?}, b2 {:?} (expected [h, d_src], [h], [d_tgt, h], [d_tgt])",
                s1,
                b1.size(),
                s2,
                b2.size()
            )));
        }
        let dev = w1.device();
        let f = |t: Tensor| -> Result<Tensor> { Ok(t.f_to_kind(Kind::Float)?.f_to_device(dev)?) };
        Ok(Self {
            w1: leaf(f(w1)?),
            b1: leaf(f(b1)?),
            w2t: leaf(f(w2)?.f_tr()?.f_contiguous()?),
            b2: leaf(f(b2)?),
        })
    }
}

impl Mapping for Autoencoder {
    fn kind(&self) -> MapKind {
        MapKind::Autoencoder
    }
    fn d_src(&self) -> i64 {
        self.w1.size()[1]
    }
    fn d_tgt(&self) -> i64 {
        self.w2t.size()[1]
    }
    fn hidden(&self) -> Option<i64> {
        Some(self.w1.size()[0])
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        check_input(x, self.d_src())?;
        let x = prepare(x, self.w1.device())?;
        let a = x.f_linear(&self.w1, Some(&self.b1))?.f_relu()?;
        let mut shape = a.size();
        let h = shape.pop().unwrap_or(0);
        shape.push(self.d_tgt());
        let y = self.b2.f_addmm(&a.f_reshape([-1, h])?, &self.w2t)?;
        Ok(y.f_reshape(shape)?)
    }
    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        vec![
            ("w1".into(), self.w1.shallow_clone()),
            ("b1".into(), self.b1.shallow_clone()),
            // A view of the stored `w2ᵀ` in PyTorch's layout (not contiguous).
            ("w2".into(), self.w2t.tr()),
            ("b2".into(), self.b2.shallow_clone()),
        ]
    }
    fn parameters(&self) -> Vec<Tensor> {
        vec![
            self.w1.shallow_clone(),
            self.b1.shallow_clone(),
            self.w2t.shallow_clone(),
            self.b2.shallow_clone(),
        ]
    }
    fn device(&self) -> Device {
        self.w1.device()
    }
    fn fold_standardization(&self, s: &Standardization) -> Result<AnyMap> {
        let _g = tch::no_grad_guard();
        let (w1, b1) = fold_input(&self.w1, &self.b1, &s.x_mean, &s.x_std)?;
        let (w2, b2) = fold_output(&self.w2t.f_tr()?, &self.b2, &s.y_mean, &s.y_std)?;
        Ok(AnyMap::Autoencoder(Autoencoder::from_parts(
            w1, b1, w2, b2,
        )?))
    }
    fn mse_loss_and_grads(
        &self,
        x: &Tensor,
        y: &Tensor,
        scale: f64,
    ) -> Result<Option<(Tensor, Vec<Tensor>)>> {
        if x.dim() != 2 {
            return Ok(None);
        }
        check_input(x, self.d_src())?;
        let _g = tch::no_grad_guard();
        let x = prepare(x, self.w1.device())?;
        // The hidden activations are formed transposed, `aᵀ` `[h, n]`, and the second weight is stored
        // transposed: then the five products below all run in the layouts MKL's sgemm is fastest in here
        // (12-17% less time than autograd's `nn.Linear` layouts at 1024-4096 rows, docs/PERFORMANCE.md).
        let mut a_t = self.b1.f_unsqueeze(1)?.f_addmm(&self.w1, &x.f_tr()?)?; // [h, n] = b1 + W1 xᵀ
        let _ = a_t.f_relu_()?;
        let mut g = self.b2.f_addmm(&a_t.f_tr()?, &self.w2t)?; // [n, d_tgt]
        let loss = mse_in_place(&mut g, y, scale)?;
        let dw2t = a_t.f_mm(&g)?; // [h, d_tgt]
        let db2 = sum_rows(&g)?;
        // ReLU's backward as autograd does it: zero where the (post-ReLU) activation is 0.
        let ga_t = a_t.f_threshold_backward(&self.w2t.f_mm(&g.f_tr()?)?, 0.0)?; // [h, n]
        let dw1 = ga_t.f_mm(&x)?; // [h, d_src]
        let db1 = ga_t.f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?;
        Ok(Some((loss, vec![dw1, db1, dw2t, db2])))
    }
    fn detached_copy(&self) -> Result<AnyMap> {
        let _g = tch::no_grad_guard();
        let c = |t: &Tensor| -> Result<Tensor> { Ok(t.detach().copy()) };
        Ok(AnyMap::Autoencoder(Autoencoder::from_parts(
            c(&self.w1)?,
            c(&self.b1)?,
            c(&self.w2t.f_tr()?)?,
            c(&self.b2)?,
        )?))
    }
}

fn check_dims(d_src: i64, d_tgt: i64) -> Result<()> {
    if d_src <= 0 || d_tgt <= 0 {
        return Err(MappingError::Config(format!(
            "map dims must be > 0, got {d_src} -> {d_tgt}"
        )));
    }
    Ok(())
}

/// Any map, e.g. as loaded from disk ([`crate::SavedMap::load`]).
#[derive(Debug)]
pub enum AnyMap {
    /// An autoencoder.
    Autoencoder(Autoencoder),
    /// An affine map (trained, ridge or Procrustes).
    Affine(Affine),
}

impl AnyMap {
    fn inner(&self) -> &dyn Mapping {
        match self {
            AnyMap::Autoencoder(m) => m,
            AnyMap::Affine(m) => m,
        }
    }

    /// Move the parameters to `device` (a new, detached map).
    pub fn to_device(&self, device: Device) -> Result<AnyMap> {
        let _g = tch::no_grad_guard();
        // By name: `from_parts` takes the saved (PyTorch) layout.
        let t: Vec<Tensor> = self
            .named_tensors()
            .iter()
            .map(|(_, t)| t)
            .map(|t| t.f_detach()?.f_to_device(device))
            .collect::<std::result::Result<_, _>>()?;
        match self {
            AnyMap::Affine(a) => Ok(AnyMap::Affine(Affine::from_parts(
                a.kind,
                t[0].shallow_clone(),
                t[1].shallow_clone(),
            )?)),
            AnyMap::Autoencoder(_) => Ok(AnyMap::Autoencoder(Autoencoder::from_parts(
                t[0].shallow_clone(),
                t[1].shallow_clone(),
                t[2].shallow_clone(),
                t[3].shallow_clone(),
            )?)),
        }
    }
}

impl Mapping for AnyMap {
    fn kind(&self) -> MapKind {
        self.inner().kind()
    }
    fn d_src(&self) -> i64 {
        self.inner().d_src()
    }
    fn d_tgt(&self) -> i64 {
        self.inner().d_tgt()
    }
    fn hidden(&self) -> Option<i64> {
        self.inner().hidden()
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.inner().forward(x)
    }
    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.inner().named_tensors()
    }
    fn parameters(&self) -> Vec<Tensor> {
        self.inner().parameters()
    }
    fn device(&self) -> Device {
        self.inner().device()
    }
    fn fold_standardization(&self, s: &Standardization) -> Result<AnyMap> {
        self.inner().fold_standardization(s)
    }
    fn detached_copy(&self) -> Result<AnyMap> {
        self.inner().detached_copy()
    }
    fn mse_loss_and_grads(
        &self,
        x: &Tensor,
        y: &Tensor,
        scale: f64,
    ) -> Result<Option<(Tensor, Vec<Tensor>)>> {
        self.inner().mse_loss_and_grads(x, y, scale)
    }
}

impl From<Affine> for AnyMap {
    fn from(m: Affine) -> Self {
        AnyMap::Affine(m)
    }
}

impl From<Autoencoder> for AnyMap {
    fn from(m: Autoencoder) -> Self {
        AnyMap::Autoencoder(m)
    }
}
