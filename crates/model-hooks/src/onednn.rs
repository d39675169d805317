//! `y = x Wᵀ + b` on oneDNN's inner product, for CPU f32 inputs of more than a few rows.
//!
//! libtorch's `linear` runs f32 on MKL's sgemm. On this project's CPU (an AMD EPYC, where MKL takes its
//! generic code path) oneDNN's JIT inner product, which libtorch also carries, is faster at every row count
//! we use: 10-20% for prefill-sized inputs (1024 rows), 20-40% for 17-256 rows, 2x for the LM head
//! (docs/PERFORMANCE.md), on the same dense weights, with no copy.
//!
//! The inner product is libtorch's `mkldnn::_linear_pointwise` (what `torch.compile` emits for linear
//! layers on CPU). tch binds only `aten` operators, so it is called through its stable C entry point in
//! libtorch's AOTInductor shim, `aoti_torch_cpu__linear_pointwise`, looked up at run time. That shim takes
//! and returns `at::Tensor*` handles, which is what a `tch::Tensor` holds. Where the entry point is missing
//! or fails a one-time probe against libtorch's `linear`, [`available`] is false and callers keep
//! libtorch's `linear`.

use crate::error::{HookError, Result};
use std::ffi::{c_char, c_void};
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

/// `aoti_torch_cpu__linear_pointwise(X, W, B*, attr, scalars, scalars_len, algorithm*, ret0*)`, as declared
/// in libtorch's `torch/csrc/inductor/aoti_torch/c/shim_cpu.h`; returns 0 on success.
type LinearPointwise = unsafe extern "C" fn(
    *mut C_tensor,
    *mut C_tensor,
    *mut *mut C_tensor,
    *const c_char,
    *const *const f64,
    i64,
    *const *const c_char,
    *mut *mut C_tensor,
) -> i32;

fn entry() -> Option<LinearPointwise> {
    static ENTRY: OnceLock<Option<LinearPointwise>> = OnceLock::new();
    *ENTRY.get_or_init(|| {
        let p = crate::device::loaded_symbol(c"aoti_torch_cpu__linear_pointwise")?;
        // SAFETY: the symbol is libtorch's shim function, whose C signature the type above restates.
        Some(unsafe { std::mem::transmute::<*mut c_void, LinearPointwise>(p) })
    })
}

/// True when the inner product can be called here and agrees with libtorch's `linear` (checked once).
pub(crate) fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| entry().is_some() && probe())
}

/// One small product against libtorch's `linear`, so a libtorch without oneDNN turns the path off
/// instead of failing every call.
fn probe() -> bool {
    let _guard = tch::no_grad_guard();
    let o = (Kind::Float, Device::Cpu);
    let x = Tensor::arange(24, o).view([3, 8]).sin();
    let w = Tensor::arange(40, o).view([5, 8]).cos();
    let b = Tensor::arange(5, o);
    match linear(&x, &w, Some(&b)) {
        Ok(y) => y.size() == [3, 5] && y.allclose(&x.linear(&w, Some(&b)), 1e-5, 1e-5, false),
        Err(_) => false,
    }
}

/// `[.., k] -> [.., n]` for `x` on the CPU in f32, `w` `[n, k]` and `b` `[n]` contiguous CPU f32.
///
/// Callers check [`available`] first and call it outside autograd (the shim bypasses the dispatcher).
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let f =
        entry().ok_or_else(|| fail("aoti_torch_cpu__linear_pointwise not found in libtorch"))?;
    let mut bias = b.map_or(std::ptr::null_mut(), |b| b.as_ptr() as *mut C_tensor);
    let bias_ptr: *mut *mut C_tensor = if bias.is_null() {
        std::ptr::null_mut()
    } else {
        &mut bias
    };
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: the handles point to live `at::Tensor`s owned by `x`, `w` and `b`, which the shim only
    // reads; `attr` is a NUL-terminated string, there are no scalars and no algorithm (null, length 0).
    // On success the shim stores a fresh `new at::Tensor` in `out`, which `Tensor::from_ptr` takes over
    // (tch frees it with `delete`, as the shim allocated it).
    let rc = unsafe {
        f(
            x.as_ptr() as *mut C_tensor,
            w.as_ptr() as *mut C_tensor,
            bias_ptr,
            c"none".as_ptr(),
            std::ptr::null(),
            0,
            std::ptr::null(),
            &mut out,
        )
    };
    if rc != 0 || out.is_null() {
        return Err(fail(&format!(
            "oneDNN inner product failed (code {rc}) for input {:?} and weight {:?}",
            x.size(),
            w.size()
        )));
    }
    // SAFETY: `out` is a valid, uniquely owned tensor handle (see above).
    Ok(unsafe { Tensor::from_ptr(out) })
}

fn fail(message: &str) -> HookError {
    HookError::Torch(tch::TchError::Torch(message.to_string()))
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    /// Prefill-, batch- and decoding-sized inputs, with and without bias, 2-D and 3-D, agree with
    /// libtorch's `linear` to float rounding.
    #[test]
    fn matches_linear() {
        assert!(
            super::available(),
            "the oneDNN inner product should be available in the pinned libtorch"
        );
        let o = (Kind::Float, Device::Cpu);
        for &(n, k) in &[(7i64, 16i64), (96, 64), (576, 1536)] {
            let w = Tensor::randn([n, k], o);
            let b = Tensor::randn([n], o);
            for shape in [vec![1, k], vec![17, k], vec![3, 50, k], vec![1024, k]] {
                let x = Tensor::randn(shape.as_slice(), o);
                for bias in [None, Some(&b)] {
                    let want = x.linear(&w, bias);
                    let got = super::linear(&x, &w, bias).unwrap();
                    assert_eq!(got.size(), want.size());
                    let err = (&got - &want).abs().max().double_value(&[]);
                    let scale = want.abs().max().double_value(&[]);
                    assert!(err <= 1e-5 * scale.max(1.0), "{shape:?} x {n}: {err}");
                }
            }
        }
    }
}
