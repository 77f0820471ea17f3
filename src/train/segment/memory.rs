//! Whether the feature cache fits: the memory it will take against what the machine (or the
//! container's cgroup, which is what SageMaker enforces) has available, checked after the first
//! encoder batch so that a job too large fails at once with the numbers instead of being
//! killed by the kernel hours later.

use std::path::Path;

/// Share of the available memory the cache may take; the rest is for the decoder's
/// activations and gradients during training.
const MAX_SHARE: f64 = 0.8;

/// The cache would not fit.
#[derive(Debug, thiserror::Error)]
#[error(
    "the cached features of {items} images need {needed_gb:.1} GB ({per_item_mb:.1} MB per \
     image at {height}x{width}), more than {share:.0}% of the {available_gb:.1} GB of memory \
     available; lower `image_size`, train with `trainable=head` (a smaller cache for the \
     DeepLab networks), use fewer images or a machine with more memory"
)]
pub(crate) struct CacheTooLarge {
    /// Images (mirrored copies included) in the cache.
    pub(crate) items: usize,
    /// Bytes per image, in MB.
    pub(crate) per_item_mb: f64,
    /// The whole cache, in GB.
    pub(crate) needed_gb: f64,
    /// Available memory, in GB.
    pub(crate) available_gb: f64,
    /// Allowed share, in percent.
    pub(crate) share: f64,
    /// Training height.
    pub(crate) height: usize,
    /// Training width.
    pub(crate) width: usize,
}

/// Fails when `items` cached images of `per_item` bytes exceed the allowed share of the
/// available memory (unknown available memory: no check).
pub(crate) fn check(
    per_item: usize,
    items: usize,
    (height, width): (usize, usize),
) -> Result<(), CacheTooLarge> {
    let Some(available) = available_bytes() else {
        return Ok(());
    };
    let needed = per_item as f64 * items as f64;
    if needed <= MAX_SHARE * available as f64 {
        return Ok(());
    }
    Err(CacheTooLarge {
        items,
        per_item_mb: per_item as f64 / 1e6,
        needed_gb: needed / 1e9,
        available_gb: available as f64 / 1e9,
        share: MAX_SHARE * 100.0,
        height,
        width,
    })
}

/// `MemAvailable`, lowered to the cgroup's remaining allowance when there is a limit.
fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let host = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())?
        * 1024;
    let read = |path: &str| -> Option<u64> {
        std::fs::read_to_string(Path::new(path))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    // cgroup v2, then v1 (whose "no limit" is a huge number, harmless in the min).
    let cgroup = read("/sys/fs/cgroup/memory.max")
        .zip(read("/sys/fs/cgroup/memory.current"))
        .or_else(|| {
            read("/sys/fs/cgroup/memory/memory.limit_in_bytes")
                .zip(read("/sys/fs/cgroup/memory/memory.usage_in_bytes"))
        })
        .map(|(limit, used)| limit.saturating_sub(used));
    Some(cgroup.map_or(host, |c| c.min(host)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_beyond_the_machine_fails_with_the_numbers() {
        assert!(check(1_000_000, 10, (320, 320)).is_ok());
        if available_bytes().is_some() {
            let err = check(usize::MAX / 4, 1000, (320, 320))
                .err()
                .map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.contains("1000 images")
                    && e.contains("at 320x320")
                    && e.contains("`image_size`")),
                "{err:?}"
            );
        }
    }
}
