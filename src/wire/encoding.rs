//! Bodies as they were before `content-encoding` (zstd, gzip, br,
//! deflate): decoded streaming, and never past a cap, so a small bomb that
//! expands to gigabytes costs at most the cap in memory.

use std::io::Read;

/// Why a body could not be decoded.
#[derive(Debug, PartialEq)]
pub enum DecodeError {
    /// It expands to more than the cap.
    TooLarge,
    Invalid(String),
}

/// Whether a body with this `content-encoding` needs decoding.
pub fn is_encoded(encoding: Option<&str>) -> bool {
    codings(encoding).next().is_some()
}

/// The codings of a `content-encoding` value, last applied first, without
/// `identity`.
fn codings(encoding: Option<&str>) -> impl Iterator<Item = String> {
    encoding
        .unwrap_or_default()
        .rsplit(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect::<Vec<_>>()
        .into_iter()
}

/// `bytes` decoded from `encoding` (a list is undone from its end), never
/// more than `cap` bytes.
pub fn decode(encoding: Option<&str>, bytes: &[u8], cap: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = bytes.to_vec();
    for coding in codings(encoding) {
        out = decode_one(&coding, &out, cap)?;
    }
    Ok(out)
}

fn decode_one(coding: &str, bytes: &[u8], cap: usize) -> Result<Vec<u8>, DecodeError> {
    let limit = cap as u64 + 1;
    let mut out = Vec::new();
    let read = match coding {
        "zstd" => zstd::stream::read::Decoder::new(bytes)
            .and_then(|d| d.take(limit).read_to_end(&mut out)),
        "gzip" | "x-gzip" => flate2::read::GzDecoder::new(bytes)
            .take(limit)
            .read_to_end(&mut out),
        "deflate" => flate2::read::ZlibDecoder::new(bytes)
            .take(limit)
            .read_to_end(&mut out),
        "br" => brotli_decompressor::Decompressor::new(bytes, 4096)
            .take(limit)
            .read_to_end(&mut out),
        other => {
            return Err(DecodeError::Invalid(format!(
                "content-encoding `{other}` is not supported"
            )));
        }
    };
    match read {
        Ok(n) if n > cap => Err(DecodeError::TooLarge),
        Ok(_) => Ok(out),
        Err(e) => Err(DecodeError::Invalid(format!(
            "cannot decode the {coding} body: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const CAP: usize = 1 << 20;

    fn gzip(plain: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(plain).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn decodes_every_coding_the_backend_may_use() {
        let plain = br#"{"error":{"type":"usage_limit_reached","resets_at":1767225600}}"#;
        let z = zstd::encode_all(&plain[..], 3).unwrap();
        assert_eq!(decode(Some("zstd"), &z, CAP).unwrap(), plain);
        assert_eq!(decode(Some(" GZIP "), &gzip(plain), CAP).unwrap(), plain);
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        zlib.write_all(plain).unwrap();
        assert_eq!(
            decode(Some("deflate"), &zlib.finish().unwrap(), CAP).unwrap(),
            plain
        );
        let mut br = Vec::new();
        brotli::BrotliCompress(&mut &plain[..], &mut br, &Default::default()).unwrap();
        assert_eq!(decode(Some("br"), &br, CAP).unwrap(), plain);
        // Applied in order gzip then zstd: undone zstd first.
        let both = zstd::encode_all(&gzip(plain)[..], 3).unwrap();
        assert_eq!(decode(Some("gzip, zstd"), &both, CAP).unwrap(), plain);
        for plainly in [None, Some(""), Some("identity")] {
            assert_eq!(decode(plainly, plain, CAP).unwrap(), plain);
            assert!(!is_encoded(plainly));
        }
        assert!(is_encoded(Some("zstd")));
    }

    #[test]
    fn a_wrong_or_unknown_coding_is_named() {
        let invalid = |e| match e {
            DecodeError::Invalid(message) => message,
            DecodeError::TooLarge => panic!("not too large"),
        };
        let plain = b"{}";
        assert!(invalid(decode(Some("compress"), plain, CAP).unwrap_err()).contains("`compress`"));
        assert!(invalid(decode(Some("zstd"), b"not zstd", CAP).unwrap_err()).contains("zstd"));
        assert!(invalid(decode(Some("br"), b"\xff\xff\xff", CAP).unwrap_err()).contains("br"));
    }

    #[test]
    fn a_small_bomb_is_cut_off_at_the_cap() {
        // 64 MiB of zeros compress to a few KiB.
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        let block = vec![0u8; 1 << 20];
        for _ in 0..64 {
            encoder.write_all(&block).unwrap();
        }
        let bomb = encoder.finish().unwrap();
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        assert_eq!(
            decode(Some("zstd"), &bomb, 32 << 20),
            Err(DecodeError::TooLarge)
        );
        let gz = gzip(&vec![0u8; 4 << 20]);
        assert_eq!(decode(Some("gzip"), &gz, CAP), Err(DecodeError::TooLarge));
    }
}
