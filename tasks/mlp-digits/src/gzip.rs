//! Reads a gzip file (RFC 1952): the header, the deflate stream (inflated by `miniz_oxide`),
//! and the trailer's CRC-32 and length, so a truncated or damaged file is an error.

use shoal::Error;

const FHCRC: u8 = 1 << 1;
const FEXTRA: u8 = 1 << 2;
const FNAME: u8 = 1 << 3;
const FCOMMENT: u8 = 1 << 4;

/// Whether `bytes` start like a gzip file.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// Inflates a single-member gzip file of at most `max_len` inflated bytes.
///
/// # Errors
/// A bad header, a damaged stream, more than `max_len` bytes, or a CRC or length that does
/// not match the trailer.
pub fn gunzip(bytes: &[u8], max_len: usize) -> Result<Vec<u8>, Error> {
    let bad = |why: &str| Error::msg(format!("gzip: {why}"));
    if !is_gzip(bytes) || bytes.len() < 18 || bytes[2] != 8 {
        return Err(bad("not a deflate gzip file"));
    }
    let flags = bytes[3];
    let mut at = 10;
    if flags & FEXTRA != 0 {
        let extra = bytes
            .get(at..at + 2)
            .ok_or_else(|| bad("truncated header"))?;
        at += 2 + usize::from(u16::from_le_bytes([extra[0], extra[1]]));
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let rest = bytes.get(at..).ok_or_else(|| bad("truncated header"))?;
            let nul = rest
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| bad("unterminated header field"))?;
            at += nul + 1;
        }
    }
    if flags & FHCRC != 0 {
        at += 2;
    }
    let stream = bytes
        .get(at..bytes.len() - 8)
        .ok_or_else(|| bad("truncated header"))?;
    let out = miniz_oxide::inflate::decompress_to_vec_with_limit(stream, max_len).map_err(|e| {
        bad(&format!(
            "{:?} (inflated size limit {max_len} bytes)",
            e.status
        ))
    })?;
    let trailer = &bytes[bytes.len() - 8..];
    let word =
        |i: usize| u32::from_le_bytes([trailer[i], trailer[i + 1], trailer[i + 2], trailer[i + 3]]);
    if word(0) != crc32(&out) || word(4) != out.len() as u32 {
        return Err(bad("CRC or length does not match the trailer"));
    }
    Ok(out)
}

/// CRC-32 (IEEE), bit by bit: the data is read once per task, so a table buys nothing.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_of_a_known_string() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn reads_the_shipped_data_and_rejects_damage() {
        let gz = include_bytes!("../../data/digits.csv.gz");
        let csv = gunzip(gz, 1 << 24).unwrap();
        assert_eq!(csv.iter().filter(|&&b| b == b'\n').count(), 1797);
        assert!(gunzip(gz, 1000).is_err(), "the size limit holds");
        assert!(gunzip(&gz[..gz.len() - 1], 1 << 24).is_err());
        let mut flipped = gz.to_vec();
        let at = flipped.len() - 6;
        flipped[at] ^= 1;
        assert!(gunzip(&flipped, 1 << 24).is_err());
        assert!(gunzip(b"plain text, not gzip", 1 << 24).is_err());
    }
}
