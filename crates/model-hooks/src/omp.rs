//! Parallel loops on libtorch's own OpenMP thread pool.
//!
//! Rosetta's CPU kernels ([`crate::skinny`], [`crate::fused`]) split their work over the threads libtorch
//! already runs (`GOMP_parallel`, looked up at run time in the libgomp that libtorch loaded), so no second
//! pool competes with libtorch's spinning workers for the cores. Where libgomp is not loaded, [`available`]
//! is false and callers use libtorch's operators instead.

use std::ffi::{c_int, c_uint, c_void};
use std::ops::Range;
use std::sync::OnceLock;

type ParallelFn = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);
type IntFn = unsafe extern "C" fn() -> c_int;

/// libgomp's entry points, as loaded by libtorch.
struct Gomp {
    parallel: ParallelFn,
    thread_num: IntFn,
    num_threads: IntFn,
}

fn gomp() -> Option<&'static Gomp> {
    static GOMP: OnceLock<Option<Gomp>> = OnceLock::new();
    GOMP.get_or_init(|| {
        let find = crate::device::loaded_symbol;
        let (p, t, n) = (
            find(c"GOMP_parallel")?,
            find(c"omp_get_thread_num")?,
            find(c"omp_get_num_threads")?,
        );
        // SAFETY: each symbol is the named libgomp function, whose C signature the type restates.
        unsafe {
            Some(Gomp {
                parallel: std::mem::transmute::<*mut c_void, ParallelFn>(p),
                thread_num: std::mem::transmute::<*mut c_void, IntFn>(t),
                num_threads: std::mem::transmute::<*mut c_void, IntFn>(n),
            })
        }
    })
    .as_ref()
}

/// True when libtorch's OpenMP runtime is loaded in this process.
pub(crate) fn available() -> bool {
    gomp().is_some()
}

/// The closure of one parallel region, behind a thin pointer for C.
struct Region<'a> {
    n: usize,
    grain: usize,
    f: &'a (dyn Fn(Range<usize>) + Sync),
}

/// Run `f` over `0..n` split into one contiguous range per thread of libtorch's pool, each range a whole
/// number of `grain`s (except the last). Small jobs (a single grain) run on the calling thread. Without
/// libgomp the whole range runs on the calling thread.
pub(crate) fn parallel_for(n: usize, grain: usize, f: &(dyn Fn(Range<usize>) + Sync)) {
    let grain = grain.max(1);
    if n == 0 {
        return;
    }
    let Some(g) = gomp().filter(|_| n > grain) else {
        f(0..n);
        return;
    };
    let region = Region { n, grain, f };
    // SAFETY: GOMP_parallel runs `run` on every thread of libtorch's pool (the caller included) and returns
    // after all of them finished; `region` outlives the call, and `f` is `Sync`.
    unsafe { (g.parallel)(run, &region as *const Region as *mut c_void, 0, 0) };
}

extern "C" fn run(data: *mut c_void) {
    // SAFETY: `data` is the `Region` passed by `parallel_for`, alive for the whole parallel region.
    let region = unsafe { &*(data as *const Region) };
    let Some(g) = gomp() else { return };
    // SAFETY: plain libgomp queries, valid inside a parallel region.
    let (t, nt) = unsafe { ((g.thread_num)() as usize, (g.num_threads)().max(1) as usize) };
    let grains = region.n.div_ceil(region.grain);
    let per = grains.div_ceil(nt) * region.grain;
    let start = (t * per).min(region.n);
    let end = ((t + 1) * per).min(region.n);
    if start < end {
        (region.f)(start..end);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Every index is visited exactly once, in grain-aligned ranges, for sizes around the grain.
    #[test]
    fn visits_every_index_once() {
        for &(n, grain) in &[
            (0usize, 4usize),
            (1, 4),
            (4, 4),
            (5, 4),
            (1000, 3),
            (1001, 64),
        ] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            let misaligned = AtomicUsize::new(0);
            // No assertion inside the region: a panic cannot unwind through libgomp.
            super::parallel_for(n, grain, &|r| {
                if r.start % grain != 0 {
                    misaligned.fetch_add(1, Ordering::Relaxed);
                }
                for i in r {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                }
            });
            assert_eq!(misaligned.load(Ordering::Relaxed), 0, "n={n} grain={grain}");
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "n={n}");
        }
    }
}
