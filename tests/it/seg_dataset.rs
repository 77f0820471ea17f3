//! A small semantic segmentation dataset built at test time from real photos: textured objects
//! cut from one photo per class (the cat of `chelsea.png`, the cup of `coffee.png`) in random
//! shapes (ellipses, rectangles, diamonds) at random sizes and positions, pasted onto random
//! crops of other photos (astronaut, rocket, motorcycle), with their exact masks as the label
//! maps. Shapes are drawn for every class alike, so only the texture tells the classes apart.

use std::path::Path;

use anyhow::{Context, Result};
use image::{imageops, GrayImage, Luma, RgbImage};
use wick::train::rng::{Rng, Stream};

use crate::support::skimage_data_dir;

/// Class names in index order.
pub(crate) const SEG_CLASSES: &[&str] = &["background", "cat", "coffee"];
/// A box in a photo: x, y, width, height.
type Region = (u32, u32, u32, u32);
/// Photo of each object class (index 1 and up) and the box of the object in it.
const OBJECTS: &[(&str, Region)] = &[
    ("chelsea.png", (60, 20, 260, 260)),
    ("coffee.png", (120, 40, 360, 300)),
];
/// Background photos.
const BACKGROUNDS: &[&str] = &["astronaut.png", "rocket.jpg", "motorcycle_left.png"];

/// The photos, loaded once per call.
pub(crate) struct Photos {
    objects: Vec<RgbImage>,
    backgrounds: Vec<RgbImage>,
}

impl Photos {
    pub(crate) fn load() -> Result<Self> {
        let dir = skimage_data_dir()?;
        let open = |f: &str| -> Result<RgbImage> {
            Ok(image::open(dir.join(f))
                .with_context(|| format!("opening {f}"))?
                .to_rgb8())
        };
        Ok(Photos {
            objects: OBJECTS
                .iter()
                .map(|(f, (x, y, w, h))| {
                    Ok(imageops::crop_imm(&open(f)?, *x, *y, *w, *h).to_image())
                })
                .collect::<Result<_>>()?,
            backgrounds: BACKGROUNDS.iter().map(|f| open(f)).collect::<Result<_>>()?,
        })
    }

    /// Composite `key`/`index` of side `size`: the image and its label map (0 = background).
    pub(crate) fn composite(&self, size: u32, key: u64, index: u64) -> (RgbImage, GrayImage) {
        let mut rng = Rng::for_stream(key, Stream::Augment, &[index]);
        let bg = &self.backgrounds[rng.below(self.backgrounds.len())];
        let side = (rng.uniform(0.4, 0.9) * f64::from(bg.width().min(bg.height()))) as u32;
        let x = rng.below((bg.width() - side) as usize + 1) as u32;
        let y = rng.below((bg.height() - side) as usize + 1) as u32;
        let crop = imageops::crop_imm(bg, x, y, side, side).to_image();
        let mut image = imageops::resize(&crop, size, size, imageops::FilterType::Triangle);
        let mut labels = GrayImage::new(size, size);
        let objects = 1 + rng.below(2);
        for _ in 0..objects {
            let class = 1 + rng.below(self.objects.len());
            let source = &self.objects[class - 1];
            let ow = (rng.uniform(0.25, 0.55) * f64::from(size)) as u32;
            let oh = (f64::from(ow) * rng.uniform(0.7, 1.4)).min(f64::from(size) * 0.6) as u32;
            // A random part of the object's texture, scaled to the shape's box.
            let tw = (f64::from(source.width()) * rng.uniform(0.5, 1.0)) as u32;
            let th = (f64::from(source.height()) * rng.uniform(0.5, 1.0)) as u32;
            let tx = rng.below((source.width() - tw) as usize + 1) as u32;
            let ty = rng.below((source.height() - th) as usize + 1) as u32;
            let mut texture = imageops::crop_imm(source, tx, ty, tw, th).to_image();
            if rng.next_f64() < 0.5 {
                texture = imageops::flip_horizontal(&texture);
            }
            let texture = imageops::resize(&texture, ow, oh, imageops::FilterType::Triangle);
            let px = rng.below((size - ow) as usize + 1) as u32;
            let py = rng.below((size - oh) as usize + 1) as u32;
            let shape = rng.below(3);
            for v in 0..oh {
                for u in 0..ow {
                    // Centred coordinates in [-1, 1].
                    let cx = (f64::from(u) + 0.5) / f64::from(ow) * 2.0 - 1.0;
                    let cy = (f64::from(v) + 0.5) / f64::from(oh) * 2.0 - 1.0;
                    let inside = match shape {
                        0 => cx * cx + cy * cy <= 1.0,
                        1 => cx.abs() <= 0.9 && cy.abs() <= 0.9,
                        _ => cx.abs() + cy.abs() <= 1.0,
                    };
                    if inside {
                        image.put_pixel(px + u, py + v, *texture.get_pixel(u, v));
                        labels.put_pixel(px + u, py + v, Luma([class as u8]));
                    }
                }
            }
        }
        (image, labels)
    }

    /// Writes `count` composites as `images/<prefix><i>.jpg` + `labels/<prefix><i>.png`.
    pub(crate) fn write(
        &self,
        (images, labels): (&Path, &Path),
        size: u32,
        key: u64,
        count: u64,
    ) -> Result<()> {
        std::fs::create_dir_all(images)?;
        std::fs::create_dir_all(labels)?;
        for i in 0..count {
            let (image, label) = self.composite(size, key, i);
            image.save_with_format(
                images.join(format!("img{key}_{i}.jpg")),
                image::ImageFormat::Jpeg,
            )?;
            label.save(labels.join(format!("img{key}_{i}.png")))?;
        }
        Ok(())
    }
}
