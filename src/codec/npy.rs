//! `application/x-npy` request bodies as the SageMaker Python SDK's `NumpySerializer` sends
//! them: a 1-D uint8 array holding an encoded image file, or uint8 pixel arrays shaped
//! `(h, w, 3)` or `(n, h, w, 3)`.

use image::RgbImage;

use super::error::CodecError;
use super::request::{ParsedRequest, RawImage};

const MAGIC: &[u8] = b"\x93NUMPY";

fn invalid(reason: impl Into<String>) -> CodecError {
    CodecError::InvalidNpy(reason.into())
}

/// Parses an `.npy` body; pixel arrays larger than `max_pixels` per image are refused.
pub(super) fn parse(body: &[u8], max_pixels: u64) -> Result<ParsedRequest, CodecError> {
    if !body.starts_with(MAGIC) || body.len() < 10 {
        return Err(invalid(
            "missing the \\x93NUMPY magic; send a .npy file (numpy.save)",
        ));
    }
    let (header_len, header_start) = match body[6] {
        1 => (u16::from_le_bytes([body[8], body[9]]) as usize, 10usize),
        2 | 3 if body.len() >= 12 => (
            u32::from_le_bytes([body[8], body[9], body[10], body[11]]) as usize,
            12,
        ),
        v => return Err(invalid(format!("unsupported .npy version {v}"))),
    };
    let header = body
        .get(header_start..header_start.saturating_add(header_len))
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| invalid("truncated or non-text header"))?;
    let data = &body[header_start + header_len..];
    let descr = header_field(header, "descr")
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .ok_or_else(|| invalid("header has no 'descr'"))?;
    if !matches!(
        descr.trim_matches(['\'', '"']),
        "|u1" | "<u1" | "u1" | "|b1"
    ) {
        return Err(invalid(format!(
            "dtype {descr} is not supported; send uint8 (encoded image bytes or RGB pixels)"
        )));
    }
    if header_field(header, "fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err(invalid(
            "Fortran-ordered arrays are not supported; use numpy.ascontiguousarray",
        ));
    }
    let shape = parse_shape(header)?;
    let expected: usize = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| invalid("shape overflows"))?;
    if data.len() != expected {
        return Err(invalid(format!(
            "shape {shape:?} needs {expected} bytes of data, the body has {}",
            data.len()
        )));
    }
    match shape.as_slice() {
        [_] => Ok(ParsedRequest { images: vec![RawImage::Encoded(data.to_vec())], is_list: false, parameters: Default::default() }),
        &[h, w, 3] => Ok(ParsedRequest { images: vec![pixels(data, (h, w), max_pixels)?], is_list: false, parameters: Default::default() }),
        &[n, h, w, 3] => {
            let images = data
                .chunks_exact((h * w * 3).max(1))
                .take(n)
                .map(|chunk| pixels(chunk, (h, w), max_pixels))
                .collect::<Result<Vec<_>, _>>()?;
            if images.is_empty() {
                return Err(invalid("the array holds no image"));
            }
            Ok(ParsedRequest { images, is_list: true, parameters: Default::default() })
        }
        other => Err(invalid(format!(
            "shape {other:?} is not supported; send (bytes,) for an encoded image, (h, w, 3) or (n, h, w, 3) for RGB pixels"
        ))),
    }
}

fn pixels(data: &[u8], (h, w): (usize, usize), max_pixels: u64) -> Result<RawImage, CodecError> {
    let count = (h as u64) * (w as u64);
    if count > max_pixels {
        return Err(CodecError::TooManyPixels {
            width: w,
            height: h,
            pixels: count,
            max_pixels,
        });
    }
    let (w32, h32) = (u32::try_from(w), u32::try_from(h));
    match (w32, h32) {
        (Ok(w32), Ok(h32)) if count > 0 => RgbImage::from_raw(w32, h32, data.to_vec())
            .map(RawImage::Pixels)
            .ok_or_else(|| invalid("pixel data does not match its shape")),
        _ => Err(invalid(format!(
            "an image of {h}x{w} pixels is not supported"
        ))),
    }
}

/// The text after `'key':` in the header dict (to the end; callers cut their value out).
fn header_field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let start = header.find(&format!("'{key}':"))? + key.len() + 3;
    Some(header[start..].trim_start())
}

fn parse_shape(header: &str) -> Result<Vec<usize>, CodecError> {
    let shape = header_field(header, "shape").ok_or_else(|| invalid("header has no 'shape'"))?;
    let inner = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| invalid("malformed shape"))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|d| {
            d.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| invalid(format!("malformed shape dimension {d:?}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-1 `.npy` with the given header dict and data, as numpy.save writes it.
    pub(crate) fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = MAGIC.to_vec();
        out.extend([1, 0]);
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn encoded_bytes_and_pixel_arrays_are_read() {
        let parsed = parse(&npy("|u1", "(4,)", b"\xff\xd8\xff\xe0"), 100).expect("parses");
        assert!(matches!(&parsed.images[..], [RawImage::Encoded(b)] if b == b"\xff\xd8\xff\xe0"));
        // 2 images of 1x2 pixels: the second image's second pixel is (9, 10, 11).
        let data: Vec<u8> = (0..12).collect();
        let parsed = parse(&npy("|u1", "(2, 1, 2, 3)", &data), 100).expect("parses");
        assert!(parsed.is_list);
        match &parsed.images[1] {
            RawImage::Pixels(img) => assert_eq!(
                (img.width(), img.height(), img.get_pixel(1, 0).0),
                (2, 1, [9, 10, 11])
            ),
            RawImage::Encoded(_) => panic!("expected pixels"),
        }
    }

    #[test]
    fn bad_arrays_are_refused_with_the_reason() {
        for (body, needle) in [
            (npy("<f4", "(4,)", &[0; 16]), "dtype"),
            (npy("|u1", "(5,)", &[0; 4]), "needs 5 bytes"),
            (npy("|u1", "(2, 2)", &[0; 4]), "shape [2, 2]"),
            (b"PK\x03\x04".to_vec(), "magic"),
        ] {
            let err = parse(&body, 100)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(needle), "{needle}: {err}");
        }
        let err = parse(&npy("|u1", "(20, 20, 3)", &[0; 1200]), 100)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("400 pixels") && err.contains("100"), "{err}");
    }
}
