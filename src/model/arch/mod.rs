//! The architecture registry: which network names wick knows and how each is built from a
//! checkpoint. Adding an architecture means adding one file and one line to [`REGISTRY`].

pub mod darknet;
mod densenet;
mod efficientnet_lite;
mod mobilenet_v2;
mod mobilenet_v3;
mod resnet;
pub mod segmentation;
pub mod yolov8;

pub use efficientnet_lite::{trunk_tensors_timm, LiteTrunkTensors};

use candle_core::{Module, Tensor};

use super::layers::{to_nhwc, Linear};
use super::weights::Weights;
use super::ModelError;

/// A network without its classifier: normalised images in, pooled features out.
pub trait Backbone: Send + Sync {
    /// `(n, h, w, 3)` NHWC, normalised -> `(n, num_features)`.
    fn forward_features(&self, xs: &Tensor) -> candle_core::Result<Tensor>;
}

/// A classification network: a backbone and a linear head.
pub struct Network {
    /// Feature extractor.
    pub backbone: Box<dyn Backbone>,
    /// `num_features -> num_classes`.
    pub classifier: Linear,
    /// Checkpoint prefix of `classifier` (`fc`, `classifier`, `_fc`, `classifier.1`): its
    /// tensors are `{key}.weight` and `{key}.bias`. `wick train` writes a new head under it.
    pub classifier_key: &'static str,
}

impl Network {
    /// `(n, 3, h, w)` normalised images -> `(n, num_features)` pooled features.
    ///
    /// A batch is split across the cores image by image rather than layer by layer: one image's
    /// activations stay in the core's cache through the whole network, while a batch-wide layer
    /// streams megabytes through memory and synchronises all cores after every layer. Measured
    /// in `docs/performance.md` (EfficientNet-Lite0 batch 8: 10.4 -> 7.1 ms per image on 2 cores).
    pub fn features(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let n = xs.dim(0)?;
        let pools = image_pools(n.min(rayon::current_num_threads()));
        if pools.len() <= 1 {
            return self.backbone.forward_features(&to_nhwc(xs)?);
        }
        let workers = pools.len();
        let mut per_worker = std::thread::scope(|scope| {
            let handles: Vec<_> = pools
                .iter()
                .enumerate()
                .map(|(worker, pool)| {
                    scope.spawn(move || {
                        pool.install(|| {
                            (worker..n)
                                .step_by(workers)
                                .map(|i| {
                                    self.backbone
                                        .forward_features(&to_nhwc(&xs.narrow(0, i, 1)?)?)
                                })
                                .collect::<candle_core::Result<Vec<Tensor>>>()
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
        })?;
        // Worker w computed images w, w + workers, ...: put them back in batch order.
        let mut ordered = Vec::with_capacity(n);
        let mut iters: Vec<_> = per_worker.iter_mut().map(|v| v.drain(..)).collect();
        for i in 0..n {
            ordered.push(iters[i % workers].next().expect("every image was computed"));
        }
        Tensor::cat(&ordered, 0)
    }

    /// `(n, 3, h, w)` normalised images -> `(n, num_classes)` logits.
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.classifier.forward(&self.features(xs)?)
    }
}

/// `workers` thread pools that split the machine's cores between them, created once per
/// worker count. An empty or single-pool answer means "run on the global pool".
fn image_pools(workers: usize) -> std::sync::Arc<Vec<rayon::ThreadPool>> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
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

/// What a builder gets: the architecture name as configured, the checkpoint, the head size.
pub struct BuildArgs<'a> {
    /// e.g. `resnet50`, `efficientnet_lite0`.
    pub name: &'a str,
    /// The checkpoint's tensors.
    pub weights: &'a Weights,
    /// Outputs of the classifier.
    pub num_classes: usize,
}

/// One family of architectures.
struct Family {
    /// The names this family builds.
    names: &'static [&'static str],
    build: fn(&BuildArgs<'_>) -> Result<Network, ModelError>,
}

const REGISTRY: &[Family] = &[
    Family {
        names: resnet::NAMES,
        build: resnet::build,
    },
    Family {
        names: efficientnet_lite::NAMES,
        build: efficientnet_lite::build,
    },
    Family {
        names: mobilenet_v2::NAMES,
        build: mobilenet_v2::build,
    },
    Family {
        names: densenet::NAMES,
        build: densenet::build,
    },
];

/// Every architecture name wick can build.
pub fn supported() -> Vec<&'static str> {
    REGISTRY
        .iter()
        .flat_map(|f| f.names.iter().copied())
        .collect()
}

/// Builds the network called `args.name` from `args.weights`.
pub fn build(args: &BuildArgs<'_>) -> Result<Network, ModelError> {
    let family = REGISTRY
        .iter()
        .find(|f| f.names.contains(&args.name))
        .ok_or_else(|| ModelError::UnknownArchitecture {
            name: args.name.to_string(),
            supported: supported().join(", "),
        })?;
    (family.build)(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `wick train` writes the new head under this key; it must be the one the builder reads.
    #[test]
    fn each_family_names_its_classifier_key() -> Result<(), ModelError> {
        let weights = Weights::synthetic();
        for (name, key) in [
            ("resnet18", "fc"),
            ("mobilenet_v2", "classifier.1"),
            ("densenet121", "classifier"),
            // Synthetic weights have no `_conv_stem.weight`, so this is the timm flavour.
            ("efficientnet_lite0", "classifier"),
            ("tf_efficientnet_lite0", "classifier"),
        ] {
            let network = build(&BuildArgs {
                name,
                weights: &weights,
                num_classes: 3,
            })?;
            assert_eq!(network.classifier_key, key, "{name}");
            assert_eq!(network.classifier.c_out(), 3, "{name}");
        }
        Ok(())
    }
}
