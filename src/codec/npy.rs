//! `application/x-npy` bodies as the SageMaker Python SDK's `NumpySerializer` sends them (a
//! 1-D uint8 array holding an encoded image file, or uint8 pixel arrays shaped `(h, w, 3)` or
//! `(n, h, w, 3)`, the batch read one image at a time), and `.npy` answers for its
//! `NumpyDeserializer` ([`encode_f32`], [`encode_u8`]).

use std::io::{BufRead, Read};

use image::RgbImage;

use super::body::spool;
use super::error::CodecError;
use super::options::RawOptions;
use super::payload::Payload;
use super::request::{BodyShape, ParsedRequest, RawImage, Record};

const MAGIC: &[u8] = b"\x93NUMPY";

fn invalid(reason: impl Into<String>) -> CodecError {
    CodecError::InvalidNpy(reason.into())
}

/// Parses an `.npy` body; pixel arrays larger than `max_pixels` per image are refused.
pub(super) fn parse(payload: Payload, max_pixels: u64) -> Result<ParsedRequest, CodecError> {
    let total_bytes = payload.len_bytes();
    let mut reader = payload.into_reader().map_err(spool)?;
    let (shape, header_bytes) = read_header(&mut *reader)?;
    let expected = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| invalid("shape overflows"))?;
    let data_bytes = total_bytes.saturating_sub(header_bytes);
    if data_bytes != expected {
        return Err(invalid(format!(
            "shape {shape:?} needs {expected} bytes of data, the body has {data_bytes}"
        )));
    }
    let mut read_rest = || -> Result<Vec<u8>, CodecError> {
        let mut data = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
        reader.read_to_end(&mut data).map_err(spool)?;
        Ok(data)
    };
    match shape.as_slice() {
        [_] => Ok(ParsedRequest::single(RawImage::Encoded(read_rest()?), RawOptions::default())),
        &[h, w, 3] => {
            check_pixels((h, w), max_pixels)?;
            Ok(ParsedRequest::single(pixels(read_rest()?, (h, w))?, RawOptions::default()))
        }
        &[n, h, w, 3] => {
            check_pixels((h, w), max_pixels)?;
            let image_bytes = h * w * 3;
            let images = (0..n).map(move |_| {
                let mut data = vec![0u8; image_bytes];
                reader.read_exact(&mut data).map_err(spool)?;
                Ok(Record {
                    image: pixels(data, (h, w))?,
                    parameters: RawOptions::default(),
                })
            });
            Ok(ParsedRequest {
                records: Box::new(images),
                shape: BodyShape::List,
                parameters: RawOptions::default(),
            })
        }
        other => Err(invalid(format!(
            "shape {other:?} is not supported; send (bytes,) for an encoded image, (h, w, 3) or (n, h, w, 3) for RGB pixels"
        ))),
    }
}

/// Reads the magic, version and header dict: the shape, and how many bytes came before the
/// data.
fn read_header(reader: &mut dyn BufRead) -> Result<(Vec<usize>, u64), CodecError> {
    let no_magic = || invalid("missing the \\x93NUMPY magic; send a .npy file (numpy.save)");
    let mut preamble = [0u8; 8];
    reader.read_exact(&mut preamble).map_err(|_| no_magic())?;
    if !preamble.starts_with(MAGIC) {
        return Err(no_magic());
    }
    let header_len = match preamble[6] {
        1 => {
            let mut len = [0u8; 2];
            reader.read_exact(&mut len).map_err(|_| no_magic())?;
            u16::from_le_bytes(len) as usize
        }
        2 | 3 => {
            let mut len = [0u8; 4];
            reader.read_exact(&mut len).map_err(|_| no_magic())?;
            u32::from_le_bytes(len) as usize
        }
        v => return Err(invalid(format!("unsupported .npy version {v}"))),
    };
    // A header is a short dict; anything longer is not an .npy file.
    if header_len > 1 << 16 {
        return Err(invalid(format!(
            "a header of {header_len} bytes is too long"
        )));
    }
    let mut header = vec![0u8; header_len];
    reader
        .read_exact(&mut header)
        .map_err(|_| invalid("truncated or non-text header"))?;
    let header =
        std::str::from_utf8(&header).map_err(|_| invalid("truncated or non-text header"))?;
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
    let preamble_bytes = if preamble[6] == 1 { 10 } else { 12 };
    Ok((parse_shape(header)?, (preamble_bytes + header_len) as u64))
}

fn check_pixels((h, w): (usize, usize), max_pixels: u64) -> Result<(), CodecError> {
    let count = (h as u64) * (w as u64);
    if count > max_pixels {
        return Err(CodecError::TooManyPixels {
            width: w,
            height: h,
            pixels: count,
            max_pixels,
        });
    }
    Ok(())
}

/// A float32 array of `shape` (C order), as `numpy.save` writes it.
pub(crate) fn encode_f32(shape: &[usize], values: &[f32]) -> Vec<u8> {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    encode("<f4", shape, &data)
}

/// A float32 array of `shape` from its little-endian bytes.
pub(crate) fn encode_f32_le(shape: &[usize], le_bytes: &[u8]) -> Vec<u8> {
    encode("<f4", shape, le_bytes)
}

/// A uint8 array of `shape` (C order), as `numpy.save` writes it.
pub(crate) fn encode_u8(shape: &[usize], values: &[u8]) -> Vec<u8> {
    encode("|u1", shape, values)
}

fn encode(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    let shape = match dims.as_slice() {
        [one] => format!("({one},)"),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // numpy pads the header so the data starts on a 64-byte boundary.
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

fn pixels(data: Vec<u8>, (h, w): (usize, usize)) -> Result<RawImage, CodecError> {
    let (w32, h32) = (u32::try_from(w), u32::try_from(h));
    match (w32, h32) {
        (Ok(w32), Ok(h32)) if h > 0 && w > 0 => RgbImage::from_raw(w32, h32, data)
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

    fn parse_bytes(body: Vec<u8>, max_pixels: u64) -> Result<ParsedRequest, CodecError> {
        parse(Payload::Memory(body), max_pixels)
    }

    #[test]
    fn encoded_bytes_and_pixel_arrays_are_read() {
        let parsed = parse_bytes(encode_u8(&[4], b"\xff\xd8\xff\xe0"), 100).expect("parses");
        assert_eq!(parsed.shape, BodyShape::One);
        let records: Vec<_> = parsed.records.collect();
        assert!(
            matches!(&records[..], [Ok(Record { image: RawImage::Encoded(b), .. })] if b == b"\xff\xd8\xff\xe0")
        );
        // 2 images of 1x2 pixels: the second image's second pixel is (9, 10, 11).
        let data: Vec<u8> = (0..12).collect();
        let parsed = parse_bytes(encode_u8(&[2, 1, 2, 3], &data), 100).expect("parses");
        assert_eq!(parsed.shape, BodyShape::List);
        let records: Vec<_> = parsed.records.collect();
        match &records[1] {
            Ok(Record {
                image: RawImage::Pixels(img),
                ..
            }) => assert_eq!(
                (img.width(), img.height(), img.get_pixel(1, 0).0),
                (2, 1, [9, 10, 11])
            ),
            _ => panic!("expected pixels"),
        }
    }

    #[test]
    fn bad_arrays_are_refused_with_the_reason() {
        for (body, needle) in [
            (encode("<f4", &[4], &[0; 16]), "dtype"),
            (encode_u8(&[5], &[0; 4]), "needs 5 bytes"),
            (encode_u8(&[2, 2], &[0; 4]), "shape [2, 2]"),
            (b"PK\x03\x04".to_vec(), "magic"),
        ] {
            let err = parse_bytes(body, 100)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(needle), "{needle}: {err}");
        }
        let err = parse_bytes(encode_u8(&[20, 20, 3], &[0; 1200]), 100)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("400 pixels") && err.contains("100"), "{err}");
    }

    #[test]
    fn answers_are_npy_files_numpy_reads() {
        let out = encode_f32(&[1, 2], &[0.25, 0.75]);
        assert!(out.starts_with(MAGIC));
        let header_len = u16::from_le_bytes([out[8], out[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0, "data 64-byte aligned");
        let header = std::str::from_utf8(&out[10..10 + header_len]).unwrap_or_default();
        assert!(
            header.contains("'<f4'") && header.contains("(1, 2)"),
            "{header}"
        );
        assert_eq!(
            &out[10 + header_len..],
            [0.25f32.to_le_bytes(), 0.75f32.to_le_bytes()].concat()
        );
        let one_d = encode_u8(&[3], &[1, 2, 3]);
        assert!(std::str::from_utf8(&one_d[10..])
            .unwrap_or_default()
            .contains("(3,)"));
    }
}
