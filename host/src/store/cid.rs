//! Content identifiers: a block is named by the blake3 hash of its bytes.

use std::{fmt, str::FromStr};

/// The blake3 hash of a block's bytes, shown (and serialized) as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cid(pub [u8; 32]);

impl serde::Serialize for Cid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Cid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Cid {
    /// The CID of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, as shown to users.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cid({})", self.to_hex())
    }
}

/// A string that is not a CID.
#[derive(Debug, thiserror::Error)]
#[error("`{input}` is not a CID: expected 64 hex characters (a blake3 hash)")]
pub struct ParseCidError {
    input: String,
}

impl FromStr for Cid {
    type Err = ParseCidError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseCidError {
            input: s.chars().take(80).collect(),
        };
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out).map_err(|_| err())?;
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects_garbage() {
        let cid = Cid::of(b"hello");
        assert_eq!(cid.to_hex().parse::<Cid>().unwrap(), cid);
        assert_eq!(cid.to_hex(), blake3::hash(b"hello").to_hex().as_str());
        assert!("xyz".parse::<Cid>().is_err());
        assert!(cid.to_hex()[..62].parse::<Cid>().is_err());
    }
}
