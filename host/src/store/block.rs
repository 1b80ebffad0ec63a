//! Block kinds: the first byte of every block says what it is, so that no block can be read as
//! another kind. A CID is still blake3 of the whole block, tag included, so fetches verify as
//! before.
//!
//! | first byte   | kind      | rest of the block                                           |
//! |--------------|-----------|-------------------------------------------------------------|
//! | `0x00`       | data      | one chunk of a file: 0..=[`CHUNK_SIZE`] bytes              |
//! | `0x53` (`S`) | manifest  | the rest of the magic `SHOALMF2`, then the manifest body    |
//! | other        | none      | not read by this version (old-format chunks, foreign bytes) |
//!
//! Why a tag: before it, a chunk was its bare bytes, so a file whose content was a valid
//! manifest stored a chunk that `manifest()` accepted, and that chunk's CID could be handed
//! out as a file listing anything (a 64 KiB manifest naming one 1 MiB chunk 2,048 times is a
//! 2 GiB file). Now a data block starts with `0x00` and a manifest with `S`: a data block never
//! decodes as a manifest, and a manifest is never read as a chunk.
//!
//! [`CHUNK_SIZE`]: super::CHUNK_SIZE

/// The first byte of a data block.
pub const DATA_TAG: u8 = 0x00;
/// Bytes a data block adds in front of its chunk.
pub const DATA_HEADER_LEN: usize = 1;

/// What a block is, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// A chunk of a file.
    Data,
    /// A file's manifest.
    Manifest,
    /// Neither: empty, an old format, or foreign bytes.
    Unknown,
}

impl BlockKind {
    /// The kind of a block from its leading bytes (at least the manifest magic's 8 to tell a
    /// manifest).
    pub fn of(bytes: &[u8]) -> Self {
        match bytes.first() {
            Some(&DATA_TAG) => Self::Data,
            Some(_) if bytes.starts_with(super::manifest::MAGIC) => Self::Manifest,
            _ => Self::Unknown,
        }
    }
}

/// The chunk inside a data block, or `None` if the block is not a data block.
pub fn data_payload(block: &[u8]) -> Option<&[u8]> {
    match block.split_first() {
        Some((&DATA_TAG, payload)) => Some(payload),
        _ => None,
    }
}

/// A data block holding `chunk`.
pub fn data_block(chunk: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(DATA_HEADER_LEN + chunk.len());
    out.push(DATA_TAG);
    out.extend_from_slice(chunk);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{CHUNK_SIZE, Cid, MAX_BLOCK_LEN, Manifest};

    #[test]
    fn kinds_are_disjoint() {
        let manifest = Manifest {
            len: 3,
            chunks: vec![Cid::of(b"abc")],
        }
        .encode();
        assert_eq!(BlockKind::of(&manifest), BlockKind::Manifest);
        assert_eq!(data_payload(&manifest), None);
        let data = data_block(&manifest);
        assert_eq!(BlockKind::of(&data), BlockKind::Data);
        assert_eq!(data_payload(&data), Some(&manifest[..]));
        assert_eq!(BlockKind::of(b""), BlockKind::Unknown);
        assert_eq!(BlockKind::of(b"SHOALMF1 old"), BlockKind::Unknown);
    }

    #[test]
    fn a_full_chunk_and_its_tag_fit_a_block() {
        assert_eq!(DATA_HEADER_LEN + CHUNK_SIZE, MAX_BLOCK_LEN);
    }
}
