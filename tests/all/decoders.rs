//! Property tests for the decoders that take bytes or numbers from outside: the host ABI's
//! argument decoding (task arguments, tensor op codes, log levels), CIDs and the manifest
//! parser. The wire codecs have their own in `p2p/src/codec.rs`. Each decoder must never
//! panic, and what it accepts must round-trip. Case counts are fixed so CI time is bounded.

use proptest::prelude::*;
use shoal::abi::{self, LogLevel, TensorOp};
use shoal_host::store::{CHUNK_SIZE, Cid, Manifest};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn task_args_never_panic_and_round_trip(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Some(pairs) = abi::decode_args(&bytes) {
            let again = abi::encode_args(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            prop_assert_eq!(again, bytes);
        }
    }

    #[test]
    fn encoded_args_decode_to_themselves(
        pairs in prop::collection::vec((".{0,12}", ".{0,12}"), 0..8)
    ) {
        let bytes = abi::encode_args(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        prop_assert_eq!(abi::decode_args(&bytes), Some(pairs));
    }

    #[test]
    fn tensor_ops_never_panic_and_round_trip(code in -4i32..32, param: i32, alpha in -1e6f32..1e6) {
        if let Some(op) = TensorOp::decode(code, param, alpha) {
            let (code2, param2, alpha2) = op.encode();
            prop_assert_eq!(TensorOp::decode(code2, param2, alpha2), Some(op));
            prop_assert_eq!((code2, param2), (code, param));
        }
    }

    #[test]
    fn log_levels_decode_only_their_codes(code: i32) {
        if let Some(level) = LogLevel::from_code(code) {
            prop_assert_eq!(level as i32, code);
        } else {
            prop_assert!(!(0..=3).contains(&code));
        }
    }

    #[test]
    fn cids_parse_only_64_hex_digits(text in "[0-9a-fA-Fg-z]{0,70}") {
        match text.parse::<Cid>() {
            Ok(cid) => {
                prop_assert_eq!(text.len(), 64);
                prop_assert_eq!(cid.to_hex(), text.to_ascii_lowercase());
            }
            Err(_) => prop_assert!(
                text.len() != 64 || text.chars().any(|c| !c.is_ascii_hexdigit())
            ),
        }
    }

    #[test]
    fn manifests_never_panic_and_round_trip(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(manifest) = Manifest::decode(&bytes) {
            prop_assert_eq!(manifest.encode(), bytes);
        }
    }

    #[test]
    fn mutated_manifests_fail_cleanly_or_round_trip(
        len in 0u64..(5 << 20),
        at: prop::sample::Index,
        xor in 1u8..,
    ) {
        let manifest = Manifest {
            len,
            chunks: (0..len.div_ceil(CHUNK_SIZE as u64)).map(|i| Cid([i as u8; 32])).collect(),
        };
        let mut bytes = manifest.encode();
        prop_assert_eq!(Manifest::decode(&bytes).ok(), Some(manifest));
        let i = at.index(bytes.len());
        bytes[i] ^= xor;
        if let Ok(other) = Manifest::decode(&bytes) {
            prop_assert_eq!(other.encode(), bytes);
        }
    }
}
