//! Class colours: the PASCAL VOC colour map (class `i`'s bits spread over the high bits of R,
//! G and B), which VOC label PNGs and their viewers use.

/// The 256-entry VOC palette; index 0 (background) is black, 255 ("void") is near white.
pub fn voc_palette() -> [[u8; 3]; 256] {
    std::array::from_fn(|index| {
        let mut rgb = [0u8; 3];
        let mut bits = index;
        for shift in (0..8).rev() {
            for (channel, value) in rgb.iter_mut().enumerate() {
                *value |= (((bits >> channel) & 1) as u8) << shift;
            }
            bits >>= 3;
        }
        rgb
    })
}

/// The colour drawn for class `index`: the VOC colour, except that class 0 (VOC's black
/// background) still needs to show when it is a real object class, as in COCO detectors.
pub fn class_color(index: usize) -> [u8; 3] {
    if index == 0 {
        return [255, 56, 56];
    }
    voc_palette()[index % 256]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_voc_colours_users_know() {
        let palette = voc_palette();
        assert_eq!(palette[0], [0, 0, 0]);
        assert_eq!(palette[1], [128, 0, 0]); // aeroplane
        assert_eq!(palette[8], [64, 0, 0]); // cat
        assert_eq!(palette[15], [192, 128, 128]); // person
        assert_eq!(palette[255], [224, 224, 192]); // void
    }
}
