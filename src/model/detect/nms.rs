//! From a detector's decoded candidates to the final boxes: confidence threshold, class filter,
//! class-aware non-maximum suppression and the detection cap, as ultralytics'
//! `non_max_suppression` does it (best class per box, at most 30000 boxes into NMS, boxes of
//! different classes never suppress each other, IoU strictly above the limit suppresses).

/// One box on the network's input canvas.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Candidate {
    /// `[x1, y1, x2, y2]` in input pixels.
    pub(crate) xyxy: [f32; 4],
    /// Confidence of the best class.
    pub(crate) score: f32,
    /// The best class.
    pub(crate) class_id: usize,
}

/// ultralytics' `max_nms`: boxes beyond this many (by score) never enter NMS.
const MAX_NMS: usize = 30_000;

/// Intersection over union of two `xyxy` boxes (0 for empty boxes).
pub(crate) fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Keeps the candidates above `threshold` (and of `classes`, if given), suppresses overlaps
/// within a class above `iou_limit`, and returns at most `max_detections`, best first.
pub(crate) fn suppress(
    mut candidates: Vec<Candidate>,
    threshold: f32,
    iou_limit: f32,
    classes: Option<&[usize]>,
    max_detections: usize,
) -> Vec<Candidate> {
    candidates.retain(|c| {
        c.score > threshold && classes.is_none_or(|allowed| allowed.contains(&c.class_id))
    });
    // Stable: equal scores keep anchor order, as torch's sort does in practice.
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    candidates.truncate(MAX_NMS);
    let mut kept: Vec<Candidate> = Vec::new();
    for c in candidates {
        if kept.len() == max_detections {
            break;
        }
        let overlaps = kept
            .iter()
            .any(|k| k.class_id == c.class_id && iou(&k.xyxy, &c.xyxy) > iou_limit);
        if !overlaps {
            kept.push(c);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(x: f32, score: f32, class_id: usize) -> Candidate {
        Candidate {
            xyxy: [x, 0.0, x + 10.0, 10.0],
            score,
            class_id,
        }
    }

    #[test]
    fn iou_of_known_boxes() {
        let a = [0.0, 0.0, 10.0, 10.0];
        assert_eq!(iou(&a, &a), 1.0);
        assert!((iou(&a, &[5.0, 0.0, 15.0, 10.0]) - 50.0 / 150.0).abs() < 1e-6);
        assert_eq!(iou(&a, &[20.0, 0.0, 30.0, 10.0]), 0.0);
        assert_eq!(iou(&[0.0; 4], &[0.0; 4]), 0.0);
    }

    #[test]
    fn overlaps_are_suppressed_within_a_class_only() {
        let boxes = vec![
            cand(0.0, 0.9, 0),
            cand(1.0, 0.8, 0), // IoU 0.82 with the first: suppressed
            cand(1.0, 0.7, 1), // another class: kept
            cand(50.0, 0.6, 0),
            cand(80.0, 0.2, 0), // below the threshold
        ];
        let kept = suppress(boxes.clone(), 0.25, 0.45, None, 300);
        let scores: Vec<f32> = kept.iter().map(|c| c.score).collect();
        assert_eq!(scores, vec![0.9, 0.7, 0.6]);
        // A looser IoU limit keeps the overlapping box.
        assert_eq!(suppress(boxes.clone(), 0.25, 0.9, None, 300).len(), 4);
        // Class filter and cap.
        let only1 = suppress(boxes.clone(), 0.25, 0.45, Some(&[1]), 300);
        assert_eq!(only1.len(), 1);
        assert_eq!(only1[0].class_id, 1);
        assert_eq!(suppress(boxes, 0.25, 0.45, None, 2).len(), 2);
    }
}
