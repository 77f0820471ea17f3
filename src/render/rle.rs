//! COCO run-length encoding of one class's mask: column-major runs starting with background,
//! the uncompressed form `pycocotools.mask.frPyObjects` reads. A building mask of a 4000x3000
//! photo is a few kilobytes this way instead of megabytes of nested lists.

use serde::Serialize;

use crate::model::LabelMap;

/// `{"size": [height, width], "counts": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct CocoRle {
    /// `[height, width]`, COCO's order.
    pub(crate) size: [u32; 2],
    /// Alternating run lengths, background first (0 when the first pixel is inside).
    pub(crate) counts: Vec<u64>,
}

/// The mask of pixels labelled `class`, run-length encoded in column-major order.
pub(crate) fn coco_rle(map: &LabelMap, class: u8) -> CocoRle {
    let (width, height) = (map.width as usize, map.height as usize);
    let mut counts = Vec::new();
    let mut inside = false;
    let mut run = 0u64;
    for x in 0..width {
        for y in 0..height {
            let is_class = map.classes[y * width + x] == class;
            if is_class != inside {
                counts.push(run);
                run = 0;
                inside = is_class;
            }
            run += 1;
        }
    }
    counts.push(run);
    CocoRle {
        size: [map.height, map.width],
        counts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes the runs back, as pycocotools would.
    fn decode(rle: &CocoRle) -> Vec<bool> {
        let (height, width) = (rle.size[0] as usize, rle.size[1] as usize);
        let mut column_major = Vec::new();
        for (i, &count) in rle.counts.iter().enumerate() {
            column_major.extend(std::iter::repeat_n(i % 2 == 1, count as usize));
        }
        let mut row_major = vec![false; width * height];
        for x in 0..width {
            for y in 0..height {
                row_major[y * width + x] = column_major[x * height + y];
            }
        }
        row_major
    }

    #[test]
    fn runs_decode_back_to_the_mask() {
        let map = LabelMap {
            width: 3,
            height: 2,
            classes: vec![1, 0, 2, 1, 1, 0],
        };
        let rle = coco_rle(&map, 1);
        assert_eq!(rle.size, [2, 3]);
        // Column 0 is (1, 1), column 1 is (0, 1), column 2 is (2, 0): a leading empty run.
        assert_eq!(rle.counts, vec![0, 2, 1, 1, 2]);
        let want: Vec<bool> = map.classes.iter().map(|&c| c == 1).collect();
        assert_eq!(decode(&rle), want);
        assert_eq!(decode(&coco_rle(&map, 9)), vec![false; 6]);
    }
}
