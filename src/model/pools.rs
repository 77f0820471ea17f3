//! Scheduling one batch image by image: rayon pools that split the machine's cores, one per
//! image in flight, created once per pool count and kept, and [`per_image`], which runs a
//! batch's images side by side on them. The classification networks run their backbone so.
//!
//! Why image by image rather than layer by layer: one image's activations stay in the core's
//! cache through the whole network, while a batch-wide layer streams megabytes through memory
//! and synchronises all cores after every layer. Measured in `docs/performance.md`
//! (EfficientNet-Lite0 batch 8: 10.4 -> 7.1 ms per image on 2 cores).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::kernels::team;
use candle_core::Tensor;

/// `forward(i)` for every image `i` of an `n`-image batch, the images dealt round-robin to the
/// pools, the results concatenated in batch order. `None` when there is one pool or fewer (one
/// image, one core, or pools refused): the caller runs the batch whole on the global pool.
pub(crate) fn per_image<F>(n: usize, forward: F) -> Option<candle_core::Result<Tensor>>
where
    F: Fn(usize) -> candle_core::Result<Tensor> + Sync,
{
    let pools = image_pools(n.min(rayon::current_num_threads()));
    if pools.len() <= 1 {
        return None;
    }
    let workers = pools.len();
    let forward = &forward;
    let per_worker = std::thread::scope(|scope| {
        let handles: Vec<_> = pools
            .iter()
            .enumerate()
            .map(|(worker, pool)| {
                scope.spawn(move || {
                    // Each image owns its core: the kernels' parallel loops run inline, not on
                    // the shared team.
                    pool.install(|| {
                        team::run_inline(|| {
                            (worker..n)
                                .step_by(workers)
                                .map(forward)
                                .collect::<candle_core::Result<Vec<Tensor>>>()
                        })
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect::<candle_core::Result<Vec<Vec<Tensor>>>>()
    });
    Some(per_worker.and_then(|mut per_worker| {
        // Worker w computed images w, w + workers, ...: put them back in batch order.
        let mut ordered = Vec::with_capacity(n);
        let mut iters: Vec<_> = per_worker.iter_mut().map(|v| v.drain(..)).collect();
        for i in 0..n {
            ordered.push(iters[i % workers].next().expect("every image was computed"));
        }
        Tensor::cat(&ordered, 0)
    }))
}

/// `workers` thread pools that split the machine's cores between them, created once per
/// worker count. An empty or single-pool answer means "run on the global pool".
fn image_pools(workers: usize) -> Arc<Vec<rayon::ThreadPool>> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<Vec<rayon::ThreadPool>>>>> = OnceLock::new();
    if workers <= 1 {
        return Arc::new(Vec::new());
    }
    let threads_each = (rayon::current_num_threads() / workers).max(1);
    let mut cache = POOLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    cache
        .entry(workers)
        .or_insert_with(|| {
            let pools = (0..workers)
                .map(|w| {
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(threads_each)
                        .thread_name(move |i| format!("wick-image-{w}-{i}"))
                        .build()
                })
                .collect::<Result<Vec<_>, _>>();
            // Without extra pools (thread creation refused) the global pool still works.
            Arc::new(pools.unwrap_or_default())
        })
        .clone()
}
