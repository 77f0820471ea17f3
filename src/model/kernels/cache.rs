//! The per-core L2 cache size the blocking of [`super::dense`] and
//! [`super::expand_depthwise`] scales with. Their constants were measured on a 1 MB L2 (Intel,
//! AVX-512); AMD's Zen 3 has 512 KB and a band sized for 1 MB spills there. Read once from
//! Linux's sysfs (what `lscpu` reports); `WICK_L2_BYTES` overrides it, for VMs whose sysfs
//! describes the host and for A/B timing.

use std::sync::OnceLock;

/// What the constants were measured on, and the answer when nothing can be read.
const REFERENCE_L2_BYTES: usize = 1 << 20;

/// Bytes of L2 per core, within 256 KB-4 MB.
pub(crate) fn l2_bytes() -> usize {
    static L2: OnceLock<usize> = OnceLock::new();
    *L2.get_or_init(|| {
        let from_env = std::env::var("WICK_L2_BYTES")
            .ok()
            .and_then(|v| v.trim().parse().ok());
        from_env
            .or_else(read_sysfs)
            .unwrap_or(REFERENCE_L2_BYTES)
            .clamp(256 << 10, 4 << 20)
    })
}

/// `bytes` measured on the reference 1 MB L2, scaled to this CPU's.
pub(crate) fn scaled(bytes: usize) -> usize {
    bytes / REFERENCE_L2_BYTES.max(1) * l2_bytes()
        + (bytes % REFERENCE_L2_BYTES) * l2_bytes() / REFERENCE_L2_BYTES
}

fn read_sysfs() -> Option<usize> {
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    (0..8).find_map(|i| {
        let index = dir.join(format!("index{i}"));
        let level = std::fs::read_to_string(index.join("level")).ok()?;
        if level.trim() != "2" {
            return None;
        }
        parse_size(&std::fs::read_to_string(index.join("size")).ok()?)
    })
}

/// `512K`, `2048K`, `1M` -> bytes.
fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let value: usize = digits.parse().ok()?;
    match unit {
        "K" => Some(value << 10),
        "M" => Some(value << 20),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_sizes_parse_and_nonsense_does_not() {
        assert_eq!(parse_size("512K\n"), Some(512 << 10));
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("1024"), None);
        assert_eq!(parse_size("K"), None);
        assert_eq!(parse_size("12Q"), None);
    }

    #[test]
    fn sizes_scale_with_the_cache_and_stay_in_range() {
        let l2 = l2_bytes();
        assert!((256 << 10..=4 << 20).contains(&l2));
        assert_eq!(scaled(REFERENCE_L2_BYTES), l2);
        assert_eq!(scaled(256 << 10), l2 / 4);
    }
}
