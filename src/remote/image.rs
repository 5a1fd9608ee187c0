//! Frame images on the wire: JPEG through OpenCV by default (a 320x240 frame shrinks ~20x),
//! raw BGR for fast links and benchmarks.

use opencv::core::{Mat, Vector};
use opencv::prelude::*;

use super::proto::ImageEncoding;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("JPEG encoding failed: {0}")]
    Encode(String),
    #[error("image could not be decoded: {0} (the edge sent a corrupt or truncated image)")]
    Decode(String),
    #[error("decoded image is {got_w}x{got_h}, the request says {want_w}x{want_h}")]
    Size { got_w: u32, got_h: u32, want_w: u32, want_h: u32 },
}

pub fn encode(bgr: &[u8], width: u32, height: u32, encoding: ImageEncoding, jpeg_quality: i32) -> Result<Vec<u8>, ImageError> {
    match encoding {
        ImageEncoding::RawBgr8 => Ok(bgr.to_vec()),
        ImageEncoding::Jpeg => {
            let enc = |e: opencv::Error| ImageError::Encode(e.to_string());
            let mat = Mat::new_rows_cols_with_bytes::<opencv::core::Vec3b>(height as i32, width as i32, bgr).map_err(enc)?;
            let mut out = Vector::<u8>::new();
            let params = Vector::from_slice(&[opencv::imgcodecs::IMWRITE_JPEG_QUALITY, jpeg_quality]);
            opencv::imgcodecs::imencode(".jpg", &mat, &mut out, &params).map_err(enc)?;
            Ok(out.to_vec())
        }
    }
}

/// Decodes to tightly packed BGR and checks the size against what the request declared.
pub fn decode(data: &[u8], width: u32, height: u32, encoding: ImageEncoding) -> Result<Vec<u8>, ImageError> {
    match encoding {
        // The protocol decoder already checked the length.
        ImageEncoding::RawBgr8 => Ok(data.to_vec()),
        ImageEncoding::Jpeg => {
            let dec = |e: opencv::Error| ImageError::Decode(e.to_string());
            let buf = Mat::from_slice(data).map_err(dec)?;
            let mat = opencv::imgcodecs::imdecode(&buf, opencv::imgcodecs::IMREAD_COLOR).map_err(dec)?;
            if mat.empty() {
                return Err(ImageError::Decode("not a JPEG image".into()));
            }
            let (got_w, got_h) = (mat.cols() as u32, mat.rows() as u32);
            if (got_w, got_h) != (width, height) {
                return Err(ImageError::Size { got_w, got_h, want_w: width, want_h: height });
            }
            let mat = if mat.is_continuous() { mat } else { mat.try_clone().map_err(dec)? };
            Ok(mat.data_bytes().map_err(dec)?.to_vec())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jpeg_round_trip_keeps_size_and_roughly_the_colour() {
        let (w, h) = (32u32, 16u32);
        let bgr: Vec<u8> = (0..w * h).flat_map(|_| [200u8, 100, 50]).collect();
        let jpeg = encode(&bgr, w, h, ImageEncoding::Jpeg, 90).unwrap();
        assert!(jpeg.len() < bgr.len());
        let back = decode(&jpeg, w, h, ImageEncoding::Jpeg).unwrap();
        assert_eq!(back.len(), bgr.len());
        assert!(back.iter().zip(&bgr).all(|(a, b)| (*a as i32 - *b as i32).abs() <= 4));
        assert!(matches!(decode(&jpeg, w + 1, h, ImageEncoding::Jpeg), Err(ImageError::Size { .. })));
        assert!(matches!(decode(b"not a jpeg", w, h, ImageEncoding::Jpeg), Err(ImageError::Decode(_))));
    }
}
