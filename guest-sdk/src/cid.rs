//! Content identifiers: the one `Cid` type of Shoal. The guest gets it from the host, the
//! host's store names blocks with it, and peers send it on the wire.

use std::{fmt, str::FromStr};

/// The length of a CID in bytes (a blake3 hash).
pub const CID_LEN: usize = 32;

/// The largest block: 1 MiB plus one byte. Larger data is a file, chunked into blocks plus a
/// manifest; a chunk block is a one-byte kind tag and up to 1 MiB of data, so that chunks stay
/// a power of two (offsets map to chunks by a shift, tensors and pages stay aligned).
pub const MAX_BLOCK_LEN: usize = (1 << 20) + 1;

/// A block's name: the blake3 hash of its bytes, shown as 64 lowercase hex digits.
///
/// With the `serde` feature it serializes as that hex text in human-readable formats (JSON)
/// and as the 32 raw bytes in binary ones (the wire).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cid(pub [u8; CID_LEN]);

impl Cid {
    /// The CID of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// Whether `bytes` hash to this CID.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        // blake3::Hash compares in constant time; not needed here, but free.
        blake3::Hash::from_bytes(self.0) == blake3::hash(bytes)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; CID_LEN] {
        &self.0
    }

    /// Lowercase hex, as shown to users.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cid({self})")
    }
}

/// A block's bytes, checked to hash to its CID: the proof travels with the bytes, so that
/// whoever stores or forwards them need not hash them again. The only ways to make one hash
/// the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Verified {
    cid: Cid,
    bytes: Vec<u8>,
}

impl Verified {
    /// `bytes`, named by their hash.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self {
            cid: Cid::of(&bytes),
            bytes,
        }
    }

    /// `bytes` if they hash to `cid`; otherwise what they hash to, and the bytes back.
    ///
    /// # Errors
    /// The bytes' actual CID when it is not `cid`.
    pub fn check(cid: Cid, bytes: Vec<u8>) -> Result<Self, (Cid, Vec<u8>)> {
        let actual = Cid::of(&bytes);
        if actual == cid {
            Ok(Self { cid, bytes })
        } else {
            Err((actual, bytes))
        }
    }

    /// The CID the bytes hash to.
    pub fn cid(&self) -> Cid {
        self.cid
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The bytes, giving up the proof.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

impl fmt::Debug for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Verified({}, {} bytes)", self.cid, self.bytes.len())
    }
}

/// A string that is not a CID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseCidError {
    input: String,
}

impl fmt::Display for ParseCidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not a CID: expected 64 hex digits (a blake3 hash)",
            self.input
        )
    }
}

impl std::error::Error for ParseCidError {}

impl FromStr for Cid {
    type Err = ParseCidError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseCidError {
            input: s.chars().take(80).collect(),
        };
        let hex = s.trim().as_bytes();
        if hex.len() != 2 * CID_LEN {
            return Err(err());
        }
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let mut out = [0u8; CID_LEN];
        for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            *byte = digit(pair[0]).ok_or_else(err)? << 4 | digit(pair[1]).ok_or_else(err)?;
        }
        Ok(Self(out))
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Cid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            self.0.serialize(s)
        }
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Cid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; CID_LEN]>::deserialize(d).map(Self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects_garbage() {
        let cid = Cid::of(b"hello");
        assert_eq!(cid.to_hex().parse::<Cid>(), Ok(cid));
        assert_eq!(cid.to_hex(), blake3::hash(b"hello").to_hex().as_str());
        assert!(cid.matches(b"hello") && !cid.matches(b"hellO"));
        assert!("xyz".parse::<Cid>().is_err());
        assert!(cid.to_hex()[..62].parse::<Cid>().is_err());
        assert!(format!("{}zz", &cid.to_hex()[..62]).parse::<Cid>().is_err());
        assert!(cid.to_hex().to_uppercase().parse::<Cid>().is_ok());
    }
}
