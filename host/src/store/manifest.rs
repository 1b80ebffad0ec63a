//! The manifest block: how a file of any size is named by one CID.
//!
//! Every file, even an empty one, is stored as its chunks (data blocks, see [`super::block`])
//! plus one manifest block, and the file's CID is the manifest's CID. A data block starts with
//! `0x00` and a manifest with `S`, so a chunk CID never names a manifest, whatever the chunk
//! holds: there is no guessing whether some bytes "look like" a manifest.
//!
//! Format (all integers little-endian):
//!
//! | offset | size      | field                                          |
//! |--------|-----------|------------------------------------------------|
//! | 0      | 8         | magic `SHOALMF2` (`SHOALMF1`: untagged chunks) |
//! | 8      | 8         | `len`: total file length in bytes (u64)        |
//! | 16     | 4         | `count`: number of chunks (u32)                |
//! | 20     | 32 × count| chunk CIDs, in file order                      |
//!
//! Chunks are exactly [`CHUNK_SIZE`] bytes except the last, which holds the remainder
//! (1..=CHUNK_SIZE bytes); `count == len.div_ceil(CHUNK_SIZE)`, and every chunk's length is
//! checked on read, so the declared length is the sum of the chunks. The chunk CIDs name data
//! blocks (the chunk behind a one-byte tag). A manifest is itself a block, so it is at most
//! [`MAX_BLOCK_LEN`]: that caps a file at [`MAX_FILE_LEN`].

use super::{Cid, MAX_BLOCK_LEN};

/// Size of every chunk but the last.
pub const CHUNK_SIZE: usize = 1 << 20;
/// The manifest magic; its first byte is the manifest's block kind.
pub(super) const MAGIC: &[u8; 8] = b"SHOALMF2";
/// The magic of the first format, whose chunks carried no kind tag.
const OLD_MAGIC: &[u8; 8] = b"SHOALMF1";
const HEADER_LEN: usize = 20;
/// The most chunks one manifest can list.
pub const MAX_CHUNKS: usize = (MAX_BLOCK_LEN - HEADER_LEN) / 32;
/// The largest file the store accepts (just under 32 GiB).
pub const MAX_FILE_LEN: u64 = (MAX_CHUNKS * CHUNK_SIZE) as u64;

/// A decoded manifest: the file's length and its chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Total length of the file in bytes.
    pub len: u64,
    /// The chunks' CIDs in file order.
    pub chunks: Vec<Cid>,
}

/// Bytes that are not a valid manifest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManifestError {
    /// Wrong magic or a truncated header: this block is a chunk, not a file.
    #[error("not a file manifest (it is a data chunk or foreign data)")]
    NotAManifest,
    /// A manifest of the first, untagged format, which this version does not read.
    #[error(
        "a manifest of an older Shoal store format (SHOALMF1), which this version does not read; put the file again"
    )]
    OldFormat,
    /// The header and the chunk list disagree.
    #[error("corrupt manifest: {0}")]
    Inconsistent(&'static str),
}

impl Manifest {
    /// Encodes the manifest as a block.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 32 * self.chunks.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        for chunk in &self.chunks {
            out.extend_from_slice(chunk.as_bytes());
        }
        out
    }

    /// Decodes and checks a manifest block.
    ///
    /// # Errors
    /// [`ManifestError`] when the bytes are not a well-formed manifest.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.starts_with(OLD_MAGIC) {
            return Err(ManifestError::OldFormat);
        }
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(ManifestError::NotAManifest);
        }
        let len = u64::from_le_bytes(
            bytes[8..16]
                .try_into()
                .map_err(|_| ManifestError::NotAManifest)?,
        );
        let count = u32::from_le_bytes(
            bytes[16..20]
                .try_into()
                .map_err(|_| ManifestError::NotAManifest)?,
        ) as usize;
        let body = &bytes[HEADER_LEN..];
        if count > MAX_CHUNKS || body.len() != count * 32 {
            return Err(ManifestError::Inconsistent(
                "chunk list length does not match its count",
            ));
        }
        if len.div_ceil(CHUNK_SIZE as u64) != count as u64 {
            return Err(ManifestError::Inconsistent(
                "file length does not match the chunk count",
            ));
        }
        let chunks = body
            .chunks_exact(32)
            .map(|c| {
                let mut cid = [0u8; 32];
                cid.copy_from_slice(c);
                Cid(cid)
            })
            .collect();
        Ok(Self { len, chunks })
    }

    /// The expected length of chunk `index`.
    pub fn chunk_len(&self, index: usize) -> usize {
        let start = index as u64 * CHUNK_SIZE as u64;
        (self.len - start).min(CHUNK_SIZE as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_raw_and_inconsistent_blocks() {
        assert_eq!(Manifest::decode(b"hello"), Err(ManifestError::NotAManifest));
        assert_eq!(
            Manifest::decode(b"SHOALMF1\0\0\0\0\0\0\0\0\0\0\0\0"),
            Err(ManifestError::OldFormat)
        );
        let m = Manifest {
            len: 5,
            chunks: vec![Cid::of(b"hello")],
        };
        let mut bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes), Ok(m));
        bytes[8] = 0; // len 0 with one chunk
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(ManifestError::Inconsistent(_))
        ));
        let empty = Manifest {
            len: 0,
            chunks: vec![],
        };
        assert_eq!(Manifest::decode(&empty.encode()), Ok(empty));
    }

    #[test]
    fn manifest_limits_fit_a_block() {
        let m = Manifest {
            len: MAX_FILE_LEN,
            chunks: vec![Cid([7; 32]); MAX_CHUNKS],
        };
        assert!(m.encode().len() <= MAX_BLOCK_LEN);
        assert_eq!(Manifest::decode(&m.encode()), Ok(m));
    }
}
