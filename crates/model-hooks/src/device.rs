//! Device selection and facts about the linked libtorch.

use crate::error::{HookError, Result};
use tch::Device;

/// Environment variable that overrides the device Rosetta picks: `cpu`, `cuda`, `cuda:N` or `auto`.
pub const DEVICE_ENV: &str = "ROSETTA_DEVICE";

/// Parse a device string: `cpu`, `cuda` (= `cuda:0`), `cuda:N`, or `auto` (CUDA when available, else CPU).
///
/// Asking for CUDA on a machine without a usable GPU is an error, not a silent fallback.
pub fn parse_device(spec: &str) -> Result<Device> {
    let s = spec.trim().to_ascii_lowercase();
    let device = match s.as_str() {
        "auto" | "" => return Ok(Device::cuda_if_available()),
        "cpu" => Device::Cpu,
        "cuda" | "gpu" => Device::Cuda(0),
        _ => match s.strip_prefix("cuda:") {
            Some(n) => Device::Cuda(n.parse().map_err(|_| HookError::Device(spec.to_string()))?),
            None => return Err(HookError::Device(spec.to_string())),
        },
    };
    if let Device::Cuda(i) = device {
        let count = tch::Cuda::device_count();
        if i as i64 >= count {
            return Err(HookError::InvalidInput(format!(
                "device {spec:?} requested but libtorch sees {count} CUDA device(s)"
            )));
        }
    }
    Ok(device)
}

/// The device Rosetta uses by default: `$ROSETTA_DEVICE` if set, else CUDA when available, else CPU.
pub fn default_device() -> Result<Device> {
    match std::env::var(DEVICE_ENV) {
        Ok(spec) => parse_device(&spec),
        Err(_) => Ok(Device::cuda_if_available()),
    }
}

/// Human-readable name of a device (`cpu`, `cuda:0`).
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Mps => "mps".to_string(),
        Device::Vulkan => "vulkan".to_string(),
    }
}

/// Facts about the libtorch this binary was built against.
#[derive(Debug, Clone)]
pub struct LibtorchInfo {
    /// Version of the PyTorch package libtorch came from, e.g. `2.13.0+cu130`.
    pub version: &'static str,
    /// Directory holding `libtorch.so` at build time (also the binary's rpath).
    pub lib_dir: &'static str,
    /// Whether libtorch can use CUDA on this machine.
    pub cuda_available: bool,
    /// Number of CUDA devices visible.
    pub cuda_devices: i64,
    /// Intra-op CPU threads libtorch uses.
    pub cpu_threads: i32,
}

/// Report the linked libtorch and what it can see.
pub fn libtorch_info() -> LibtorchInfo {
    LibtorchInfo {
        version: env!("ROSETTA_LIBTORCH_VERSION"),
        lib_dir: env!("ROSETTA_LIBTORCH_LIB"),
        cuda_available: tch::Cuda::is_available(),
        cuda_devices: tch::Cuda::device_count(),
        cpu_threads: tch::get_num_threads(),
    }
}

/// Flush denormal floats to zero on this thread (x86 FTZ + DAZ; what `torch.set_flush_denormal(True)`
/// does). Returns whether it is supported here.
///
/// Denormals make CPU arithmetic 10-100x slower. They appear in practice in optimiser state: AdamW's first
/// moment of a parameter whose gradient is zero (a dead ReLU unit) decays by `beta1` every step and
/// becomes denormal after a few hundred steps, which slowed map training on CPU tenfold in later epochs.
/// Call it at the start of `main`, before the first tensor operation: libtorch's worker threads are
/// created later and inherit the setting; threads that already exist keep theirs.
pub fn flush_denormals() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: reading and writing MXCSR only changes this thread's floating-point mode; FTZ (bit 15)
        // and DAZ (bit 6) are supported by every x86-64 CPU with SSE2/SSE3.
        #[allow(deprecated)]
        unsafe {
            use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
            _mm_setcsr(_mm_getcsr() | 0x8040);
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

unsafe extern "C" {
    fn dlsym(
        handle: *mut std::ffi::c_void,
        symbol: *const std::ffi::c_char,
    ) -> *mut std::ffi::c_void;
}

/// Address of a C symbol in the objects already loaded into the process (libtorch and the libraries it
/// brought: libgomp, the AOTInductor shim), or `None` where it is absent.
pub(crate) fn loaded_symbol(name: &std::ffi::CStr) -> Option<*mut std::ffi::c_void> {
    // SAFETY: dlsym with RTLD_DEFAULT (null on glibc) only looks the name up in the loaded objects.
    let p = unsafe { dlsym(std::ptr::null_mut(), name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

/// Whether this CPU has AMX-BF16 tile instructions (Intel Xeon since Sapphire Rapids).
///
/// With them libtorch's CPU attention multiplies bf16 natively; without them its bf16 and f16 products go
/// through MKL routines that convert to f32 anyway (see the attention in `model.rs`).
pub(crate) fn cpu_has_amx_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // CPUID.(EAX=7, ECX=0):EDX bit 22 is AMX-BF16.
        #[allow(unused_unsafe)]
        // SAFETY: CPUID leaf 7 exists on every x86-64 CPU libtorch runs on (it needs AVX2 at least).
        let r = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
        r.edx & (1 << 22) != 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_denormals_flushes_on_this_thread_only() {
        let tiny = || std::hint::black_box(1e-30f32) * std::hint::black_box(1e-10f32);
        std::thread::spawn(move || {
            assert!(tiny() > 0.0, "denormals are kept by default");
            if flush_denormals() {
                assert_eq!(tiny(), 0.0);
                // Threads created afterwards inherit the mode.
                assert_eq!(std::thread::spawn(tiny).join().unwrap(), 0.0);
            }
        })
        .join()
        .unwrap();
        assert!(tiny() > 0.0, "other threads are unaffected");
    }

    #[test]
    fn parses_device_strings() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(parse_device(" CPU ").unwrap(), Device::Cpu);
        assert!(matches!(parse_device("tpu"), Err(HookError::Device(_))));
        assert!(matches!(parse_device("cuda:x"), Err(HookError::Device(_))));
        if !tch::Cuda::is_available() {
            assert!(parse_device("cuda:0").is_err());
            assert_eq!(parse_device("auto").unwrap(), Device::Cpu);
        }
    }

    #[test]
    fn libtorch_version_is_recorded() {
        let info = libtorch_info();
        assert!(info.version.starts_with("2.13.0"), "{}", info.version);
    }
}
