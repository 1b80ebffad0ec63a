//! Wire format: one length-prefixed postcard frame per request and per response, with
//! explicit per-protocol size limits.
//!
//! A frame is a 4-byte big-endian payload length followed by the postcard payload. The
//! reader checks the declared length against the protocol's limit *before* reading the body,
//! reads at most that many bytes (growing its buffer only as bytes arrive), and rejects
//! trailing bytes. Any violation is an [`io::ErrorKind::InvalidData`] error, which makes
//! libp2p drop the stream.

use std::{io, marker::PhantomData};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{StreamProtocol, request_response};
use serde::{Serialize, de::DeserializeOwned};

use crate::messages::{
    BlockRequest, BlockResponse, Capacity, CapacityRequest, MAX_BLOCK_LEN, MAX_PROGRESS_LEN,
    ProgressRecord,
};

/// `/shoal/block/2`: fetch a block by id.
pub const BLOCK_PROTOCOL: StreamProtocol = StreamProtocol::new(BLOCK_PROTOCOL_NAME);
/// `/shoal/capacity/1`: ask a peer for its advertised capacity.
pub const CAPACITY_PROTOCOL: StreamProtocol = StreamProtocol::new(CAPACITY_PROTOCOL_NAME);
/// `/shoal/progress/1`: a task's progress record, from the peer running it to its submitter.
pub const PROGRESS_PROTOCOL: StreamProtocol = StreamProtocol::new(PROGRESS_PROTOCOL_NAME);
/// The name of [`BLOCK_PROTOCOL`].
pub const BLOCK_PROTOCOL_NAME: &str = "/shoal/block/2";
/// The name of [`CAPACITY_PROTOCOL`].
pub const CAPACITY_PROTOCOL_NAME: &str = "/shoal/capacity/1";
/// The name of [`PROGRESS_PROTOCOL`].
pub const PROGRESS_PROTOCOL_NAME: &str = "/shoal/progress/1";
/// Shoal's private Kademlia DHT.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/kad/1.0.0");
/// The protocol version peers announce through identify.
pub const IDENTIFY_PROTOCOL_VERSION: &str = "/shoal/id/1.0.0";

/// Bytes of the frame header (the big-endian `u32` payload length).
pub const FRAME_HEADER_BYTES: usize = 4;

/// The largest payloads, in bytes, that one protocol accepts in each direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest request payload.
    pub request: usize,
    /// Largest response payload.
    pub response: usize,
}

/// `/shoal/block/2`: two 32-byte ids and a credential in (a chain of at most
/// [`crate::auth::MAX_CHAIN`] links of about 200 bytes); a block of at most 1 MiB plus the enum
/// tag and length varint out.
pub const BLOCK_LIMITS: FrameLimits = FrameLimits {
    request: 4096,
    response: MAX_BLOCK_LEN + 64,
};
/// `/shoal/task/6` ([`crate::tasks`]): a 1 MiB spec in; a 4 MiB outcome (logs dominate) out.
pub const TASK_LIMITS: FrameLimits = FrameLimits {
    request: 1 << 20,
    response: 4 << 20,
};
/// `/shoal/capacity/1`: an empty request in; four small fields out.
pub const CAPACITY_LIMITS: FrameLimits = FrameLimits {
    request: 16,
    response: 64,
};

/// `/shoal/progress/1`: a token and a record of at most [`MAX_PROGRESS_LEN`] bytes in; an
/// empty acknowledgement out.
pub const PROGRESS_LIMITS: FrameLimits = FrameLimits {
    request: MAX_PROGRESS_LEN + 32,
    response: 16,
};

fn invalid_data(msg: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads one frame of at most `max` payload bytes and decodes it.
///
/// # Errors
///
/// [`io::ErrorKind::InvalidData`] if the declared length exceeds `max`, the payload is not a
/// valid postcard `M`, or bytes are left over after it; [`io::ErrorKind::UnexpectedEof`] if
/// the stream ends early; any error of `io` itself.
///
/// # Cancel safety
///
/// Not cancel safe: dropping the future mid-frame loses the bytes read so far.
pub async fn read_frame<T, M>(io: &mut T, max: usize) -> io::Result<M>
where
    T: AsyncRead + Unpin + Send,
    M: DeserializeOwned,
{
    let mut header = [0u8; FRAME_HEADER_BYTES];
    io.read_exact(&mut header).await?;
    let declared = u32::from_be_bytes(header);
    let len =
        usize::try_from(declared).map_err(|_| invalid_data("frame length overflows usize"))?;
    if len > max {
        return Err(invalid_data(format!(
            "frame of {len} bytes exceeds the limit of {max} bytes"
        )));
    }
    // Grow with the bytes that actually arrive, so that a peer declaring a large frame and
    // then stalling costs us nothing.
    let mut buf = Vec::new();
    io.take(u64::from(declared)).read_to_end(&mut buf).await?;
    if buf.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("frame truncated: {} of {len} bytes", buf.len()),
        ));
    }
    let (msg, rest) = postcard::take_from_bytes::<M>(&buf)
        .map_err(|e| invalid_data(format!("malformed frame: {e}")))?;
    if !rest.is_empty() {
        return Err(invalid_data(format!(
            "{} trailing bytes after the message",
            rest.len()
        )));
    }
    Ok(msg)
}

/// Encodes `msg` as one frame (header and payload), refusing payloads over `max` bytes.
///
/// # Errors
///
/// [`io::ErrorKind::InvalidInput`] if the encoded message exceeds `max`.
pub fn encode_frame<M: Serialize>(max: usize, msg: &M) -> io::Result<Vec<u8>> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    let too_big = |len| {
        invalid(format!(
            "message of {len} bytes exceeds the limit of {max} bytes"
        ))
    };
    let len = postcard::experimental::serialized_size(msg)
        .map_err(|e| invalid(format!("encode: {e}")))?;
    if len > max {
        return Err(too_big(len));
    }
    let header = u32::try_from(len).map_err(|_| too_big(len))?.to_be_bytes();
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + len);
    frame.extend_from_slice(&header);
    postcard::to_io(msg, &mut frame).map_err(|e| invalid(format!("encode: {e}")))?;
    Ok(frame)
}

/// Encodes `msg` and writes it as one frame, refusing payloads over `max` bytes.
///
/// # Errors
///
/// [`io::ErrorKind::InvalidInput`] if the encoded message exceeds `max` (nothing is written
/// then); any error of `io` itself.
pub async fn write_frame<T, M>(io: &mut T, max: usize, msg: &M) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
    M: Serialize,
{
    let frame = encode_frame(max, msg)?;
    write_encoded(io, &frame).await
}

async fn write_encoded<T>(io: &mut T, frame: &[u8]) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    io.write_all(frame).await?;
    io.flush().await
}

/// A request-response [`Codec`](request_response::Codec) that frames `Req`/`Resp` with
/// postcard under fixed [`FrameLimits`].
#[derive(Clone, Debug)]
pub struct FramedCodec<Req, Resp> {
    limits: FrameLimits,
    // `fn() -> _` keeps the codec Send + Sync whatever the message types are.
    _messages: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> FramedCodec<Req, Resp> {
    /// A codec enforcing `limits`.
    pub const fn new(limits: FrameLimits) -> Self {
        Self {
            limits,
            _messages: PhantomData,
        }
    }
}

/// The codec of `/shoal/block/2`.
pub type BlockCodec = FramedCodec<BlockRequest, BlockResponse>;
/// The codec of `/shoal/capacity/1`.
pub type CapacityCodec = FramedCodec<CapacityRequest, Capacity>;
/// The codec of `/shoal/progress/1`.
pub type ProgressCodec = FramedCodec<ProgressRecord, ()>;

impl<Req, Resp> request_response::Codec for FramedCodec<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Send + 'static,
    Resp: Serialize + DeserializeOwned + Send + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.limits.request).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.limits.response).await
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Req) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        // Encode before the first await: the future then holds no `&Req` (Req need not be Sync).
        let frame = encode_frame(self.limits.request, &req)?;
        write_encoded(io, &frame).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let frame = encode_frame(self.limits.response, &res)?;
        write_encoded(io, &frame).await
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Debug;

    use futures::{executor::block_on, io::Cursor};
    use proptest::prelude::*;

    use super::*;
    use crate::messages::{
        AuthError, Cid, Credential, Delegation, FailureKind, TaskAuth, TaskLimits, TaskOutcome,
        TaskSpec, TaskStats,
    };

    fn round_trip<M>(msg: &M, max: usize) -> M
    where
        M: Serialize + DeserializeOwned + PartialEq + Debug,
    {
        let mut wire = Cursor::new(Vec::new());
        block_on(write_frame(&mut wire, max, msg)).expect("write");
        let mut wire = Cursor::new(wire.into_inner());
        let back: M = block_on(read_frame(&mut wire, max)).expect("read");
        assert_eq!(
            wire.position() as usize,
            wire.get_ref().len(),
            "all bytes consumed"
        );
        back
    }

    fn read_raw<M: DeserializeOwned>(bytes: Vec<u8>, max: usize) -> io::Result<M> {
        block_on(read_frame(&mut Cursor::new(bytes), max))
    }

    fn frame(declared: u32, body: &[u8]) -> Vec<u8> {
        let mut v = declared.to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    fn block_id() -> impl Strategy<Value = Cid> {
        any::<[u8; 32]>().prop_map(Cid)
    }

    fn failure_kind() -> impl Strategy<Value = FailureKind> {
        prop_oneof![
            Just(FailureKind::Trap),
            Just(FailureKind::OutOfMemory),
            Just(FailureKind::Timeout),
            Just(FailureKind::BadModule),
            Just(FailureKind::BadInput),
            Just(FailureKind::TaskError),
            Just(FailureKind::Denied),
            Just(FailureKind::Lost),
            Just(FailureKind::Busy),
            Just(FailureKind::Other),
        ]
    }

    prop_compose! {
        fn task_spec()(
            module in block_id(),
            entry in ".{0,40}",
            inputs in prop::collection::vec((".{0,20}", block_id()), 0..8),
            args in prop::collection::vec((".{0,20}", ".{0,40}"), 0..8),
            limits in task_limits(),
            depth in 0u32..8,
            progress in any::<u64>(),
            deterministic in any::<bool>(),
            sources in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..4),
            auth in task_auth(),
        ) -> TaskSpec {
            TaskSpec { module, entry, inputs, args, limits, depth, progress, deterministic, sources, auth: Box::new(auth) }
        }
    }

    prop_compose! {
        fn task_auth()(
            credential in credential(),
            (issued_at_ms, nonce) in any::<(u64, u64)>(),
            signature in prop::collection::vec(any::<u8>(), 0..80),
        ) -> TaskAuth {
            TaskAuth { credential, issued_at_ms, nonce, signature }
        }
    }

    prop_compose! {
        fn credential()(
            tenant in prop::collection::vec(any::<u8>(), 0..48),
            chain in prop::collection::vec(delegation(), 0..3),
        ) -> Credential {
            Credential { tenant, chain }
        }
    }

    prop_compose! {
        fn delegation()(
            audience in prop::collection::vec(any::<u8>(), 0..48),
            expires_at_ms in any::<u64>(),
            task in block_id(),
            max_subtasks in any::<u32>(),
            parent in block_id(),
            signature in prop::collection::vec(any::<u8>(), 0..80),
        ) -> Delegation {
            Delegation { audience, expires_at_ms, task, max_subtasks, parent, signature }
        }
    }

    prop_compose! {
        fn task_limits()(
            (memory_bytes, timeout_ms, cpu_budget_ms) in any::<(u64, u64, u64)>(),
        ) -> TaskLimits {
            TaskLimits { memory_bytes, timeout_ms, cpu_budget_ms }
        }
    }

    prop_compose! {
        fn task_stats()(
            (wall_us, cpu_us, peak_memory_bytes) in any::<(u64, u64, u64)>(),
            cached_module in any::<bool>(),
            backend in ".{0,10}",
            limits in task_limits(),
            executed_by in ".{0,60}",
            fetch_us in any::<u64>(),
        ) -> TaskStats {
            TaskStats { wall_us, cpu_us, peak_memory_bytes, cached_module, backend, limits, executed_by, fetch_us }
        }
    }

    fn task_outcome() -> impl Strategy<Value = TaskOutcome> {
        prop_oneof![
            (
                prop::collection::vec((".{0,20}", block_id()), 0..8),
                ".{0,200}",
                task_stats(),
            )
                .prop_map(|(outputs, logs, stats)| TaskOutcome::Ok {
                    outputs,
                    logs,
                    stats
                }),
            (failure_kind(), ".{0,80}", ".{0,200}", task_stats()).prop_map(
                |(kind, message, logs, stats)| TaskOutcome::Failed {
                    kind,
                    message,
                    logs,
                    stats,
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn block_request_round_trips(cid in block_id(), file in block_id(), credential in credential()) {
            let msg = BlockRequest { cid, file, credential };
            prop_assert_eq!(round_trip(&msg, BLOCK_LIMITS.request), msg);
        }

        #[test]
        fn block_response_round_trips(
            msg in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..4096).prop_map(BlockResponse::Found),
                Just(BlockResponse::NotFound),
                Just(BlockResponse::Denied),
                Just(BlockResponse::Busy),
            ]
        ) {
            prop_assert_eq!(round_trip(&msg, BLOCK_LIMITS.response), msg);
        }

        #[test]
        fn task_spec_round_trips(msg in task_spec()) {
            prop_assert_eq!(round_trip(&msg, TASK_LIMITS.request), msg);
        }

        #[test]
        fn task_outcome_round_trips(msg in task_outcome()) {
            prop_assert_eq!(round_trip(&msg, TASK_LIMITS.response), msg);
        }

        #[test]
        fn progress_round_trips(
            token in any::<u64>(),
            data in prop::collection::vec(any::<u8>(), 0..=MAX_PROGRESS_LEN),
        ) {
            let msg = ProgressRecord { token, data };
            prop_assert_eq!(round_trip(&msg, PROGRESS_LIMITS.request), msg);
            prop_assert_eq!(round_trip(&(), PROGRESS_LIMITS.response), ());
        }

        #[test]
        fn capacity_round_trips(
            free_slots in any::<u32>(),
            total_slots in any::<u32>(),
            has_gpu in any::<bool>(),
            queue_len in any::<u32>(),
        ) {
            let msg = Capacity { free_slots, total_slots, has_gpu, queue_len };
            prop_assert_eq!(round_trip(&msg, CAPACITY_LIMITS.response), msg);
            prop_assert_eq!(round_trip(&CapacityRequest, CAPACITY_LIMITS.request), CapacityRequest);
        }
    }

    /// Decodes `bytes` as one `M` frame under `max` and checks that the result is one the
    /// reader promises: an error of a documented kind (`UnexpectedEof` only if `may_be_short`),
    /// `InvalidData` for any declared length over `max`, and otherwise a message that
    /// round-trips.
    fn check_read<M>(bytes: &[u8], max: usize, may_be_short: bool) -> Result<(), TestCaseError>
    where
        M: Serialize + DeserializeOwned + PartialEq + Debug,
    {
        let declared = bytes
            .first_chunk::<FRAME_HEADER_BYTES>()
            .map(|h| u32::from_be_bytes(*h) as usize);
        match read_raw::<M>(bytes.to_vec(), max) {
            Err(e) => {
                let expected = e.kind() == io::ErrorKind::InvalidData
                    || (may_be_short && e.kind() == io::ErrorKind::UnexpectedEof);
                prop_assert!(expected, "unexpected error kind: {e}");
                if declared.is_some_and(|len| len > max) {
                    prop_assert_eq!(e.kind(), io::ErrorKind::InvalidData);
                    prop_assert!(e.to_string().contains("exceeds the limit"), "{e}");
                }
            }
            Ok(msg) => {
                let within = declared
                    .is_some_and(|len| len <= max && FRAME_HEADER_BYTES + len <= bytes.len());
                prop_assert!(within, "decoded {msg:?} from an over-limit or short frame");
                prop_assert_eq!(round_trip(&msg, max), msg);
            }
        }
        Ok(())
    }

    /// Every message type of every protocol, read from `bytes` under its own limit.
    fn check_read_all(bytes: &[u8], may_be_short: bool) -> Result<(), TestCaseError> {
        check_read::<TaskSpec>(bytes, TASK_LIMITS.request, may_be_short)?;
        check_read::<TaskOutcome>(bytes, TASK_LIMITS.response, may_be_short)?;
        check_read::<BlockRequest>(bytes, BLOCK_LIMITS.request, may_be_short)?;
        check_read::<BlockResponse>(bytes, BLOCK_LIMITS.response, may_be_short)?;
        check_read::<CapacityRequest>(bytes, CAPACITY_LIMITS.request, may_be_short)?;
        check_read::<Capacity>(bytes, CAPACITY_LIMITS.response, may_be_short)?;
        check_read::<ProgressRecord>(bytes, PROGRESS_LIMITS.request, may_be_short)?;
        check_read::<()>(bytes, PROGRESS_LIMITS.response, may_be_short)
    }

    // Hostile input: few and fixed cases, so that CI time stays bounded.
    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Hostile bytes (header included) fail with a documented error kind or decode to a
        /// message that round-trips; they never panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            check_read_all(&bytes, true)?;
        }

        /// A frame with a truthful header and a random body fails as `InvalidData` (never as
        /// a short read: every byte is there) or decodes to a message that round-trips.
        #[test]
        fn random_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            check_read_all(&frame(body.len() as u32, &body), false)?;
        }

        /// A valid spec with one byte changed fails cleanly or decodes to a message that
        /// round-trips, so the strings, varints and tags of real messages are exercised too.
        #[test]
        fn mutated_frames_fail_cleanly_or_round_trip(
            msg in task_spec(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut bytes = encode_frame(TASK_LIMITS.request, &msg).expect("encode");
            let at = at.index(bytes.len());
            bytes[at] = byte;
            check_read::<TaskSpec>(&bytes, TASK_LIMITS.request, true)?;
        }

        /// A valid frame cut short anywhere, in its header or its body, is `UnexpectedEof`:
        /// never a message decoded from part of a frame.
        #[test]
        fn cut_frames_are_unexpected_eof(msg in task_spec(), cut in any::<prop::sample::Index>()) {
            let bytes = encode_frame(TASK_LIMITS.request, &msg).expect("encode");
            let cut = cut.index(bytes.len());
            let err = read_raw::<TaskSpec>(bytes[..cut].to_vec(), TASK_LIMITS.request)
                .expect_err("a short frame");
            prop_assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        }

        /// Any declared length over a protocol's limit is refused on the header alone,
        /// whatever follows it.
        #[test]
        fn over_limit_declared_length_is_always_invalid_data(
            excess in 1..=(u32::MAX as usize - TASK_LIMITS.response),
            body in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            for max in [
                TASK_LIMITS.request,
                TASK_LIMITS.response,
                BLOCK_LIMITS.request,
                BLOCK_LIMITS.response,
                CAPACITY_LIMITS.request,
                CAPACITY_LIMITS.response,
            ] {
                let declared = u32::try_from(max + excess).unwrap_or(u32::MAX);
                let err = read_raw::<BlockResponse>(frame(declared, &body), max)
                    .expect_err("over the limit");
                prop_assert_eq!(err.kind(), io::ErrorKind::InvalidData);
                prop_assert!(err.to_string().contains("exceeds the limit"), "{err}");
            }
        }
    }

    #[test]
    fn full_size_block_fits_the_block_limit() {
        let msg = BlockResponse::Found(vec![7u8; MAX_BLOCK_LEN]);
        assert_eq!(round_trip(&msg, BLOCK_LIMITS.response), msg);
    }

    #[test]
    fn oversized_declared_length_is_rejected_before_reading() {
        // Declares 4 GiB but sends 3 bytes: must fail on the header alone.
        let err =
            read_raw::<BlockResponse>(frame(u32::MAX, b"abc"), BLOCK_LIMITS.response).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("exceeds the limit"), "{err}");

        let just_over = (BLOCK_LIMITS.request + 1) as u32;
        let err =
            read_raw::<BlockRequest>(frame(just_over, &[]), BLOCK_LIMITS.request).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn oversized_block_is_refused_by_the_writer() {
        let msg = BlockResponse::Found(vec![0u8; MAX_BLOCK_LEN + 100]);
        let mut wire = Cursor::new(Vec::new());
        let err = block_on(write_frame(&mut wire, BLOCK_LIMITS.response, &msg)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(wire.into_inner().is_empty(), "nothing written");
    }

    #[test]
    fn malformed_payload_is_invalid_data() {
        // Enum tag 9 does not exist in BlockResponse.
        let err = read_raw::<BlockResponse>(frame(1, &[9]), BLOCK_LIMITS.response).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // A Found whose inner length varint claims more than the frame holds.
        let err = read_raw::<BlockResponse>(frame(3, &[0, 0xff, 0x7f]), BLOCK_LIMITS.response)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // Invalid UTF-8 in a string.
        let mut spec = vec![0u8; 32];
        spec.extend_from_slice(&[2, 0xff, 0xfe]);
        let err =
            read_raw::<TaskSpec>(frame(spec.len() as u32, &spec), TASK_LIMITS.request).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn trailing_bytes_are_invalid_data() {
        let err = read_raw::<BlockResponse>(frame(2, &[1, 0]), BLOCK_LIMITS.response).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("trailing"), "{err}");
    }

    /// A task's lists are bounded as they decode: a frame of empty entries would otherwise
    /// decode to many times its size before anyone counted them.
    #[test]
    fn a_task_with_more_inputs_or_arguments_than_allowed_does_not_decode() {
        let spec = |inputs: usize, args: usize| TaskSpec {
            module: Cid([1; 32]),
            entry: String::new(),
            inputs: vec![(String::new(), Cid([2; 32])); inputs],
            args: vec![(String::new(), String::new()); args],
            limits: TaskLimits::default(),
            depth: 0,
            progress: 0,
            deterministic: false,
            sources: Vec::new(),
            auth: Box::default(),
        };
        let decodes = |spec: &TaskSpec| {
            let bytes = postcard::to_stdvec(spec).unwrap();
            postcard::from_bytes::<TaskSpec>(&bytes).is_ok()
        };
        let (inputs, args) = (shoal::abi::MAX_TASK_INPUTS, shoal::abi::MAX_TASK_ARGS);
        assert!(decodes(&spec(inputs, args)));
        assert!(!decodes(&spec(inputs + 1, 0)));
        assert!(!decodes(&spec(0, args + 1)));
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let err = read_raw::<BlockRequest>(frame(32, &[1; 10]), BLOCK_LIMITS.request).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let err = read_raw::<BlockRequest>(vec![0, 0], BLOCK_LIMITS.request).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// Over a real duplex pipe, a hostile writer that declares a huge frame is cut off after
    /// the header, without the reader waiting for (or buffering) the body.
    #[tokio::test]
    async fn hostile_stream_over_duplex_is_rejected() {
        use tokio_util::compat::TokioAsyncReadCompatExt;

        let (ours, mut theirs) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            theirs.write_all(&(64u32 << 20).to_be_bytes()).await?;
            // Keep the pipe open and stall: the reader must not wait for the body.
            std::future::pending::<()>().await;
            io::Result::Ok(())
        });
        let mut ours = ours.compat();
        let result = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            read_frame::<_, TaskSpec>(&mut ours, TASK_LIMITS.request),
        )
        .await
        .expect("rejected without waiting for the body");
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::InvalidData);
        writer.abort();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// A signed spec verifies as its tenant's, survives the wire, and any change to what
        /// was signed (here: the entry, the limits, the tenant's stamp) breaks it.
        #[test]
        fn signed_specs_verify_and_tampering_breaks_them(
            mut spec in task_spec(),
            nonce in any::<u64>(),
            flip in any::<u64>(),
        ) {
            let tenant = libp2p::identity::Keypair::generate_ed25519();
            let executor = libp2p::identity::Keypair::generate_ed25519().public().to_peer_id();
            *spec.auth = TaskAuth::default();
            spec.auth.credential = Credential::of(&tenant)
                .delegate(&tenant, executor, 10_000, spec.id(), 8)
                .unwrap();
            spec.sign(&tenant, 1_000, nonce).unwrap();
            let back = round_trip(&spec, usize::MAX);
            prop_assert_eq!(back.verify(executor, 2_000), Ok(tenant.public().to_peer_id()));
            // A change to the spec is another task: the delegation no longer names it.
            let mut entry = back.clone();
            entry.entry.push('x');
            let other = matches!(entry.verify(executor, 2_000), Err(AuthError::OtherTask { .. }));
            prop_assert!(other);
            let mut limits = back.clone();
            limits.limits.memory_bytes ^= flip | 1;
            let other = matches!(limits.verify(executor, 2_000), Err(AuthError::OtherTask { .. }));
            prop_assert!(other);
            let mut stamp = back;
            stamp.auth.nonce ^= flip | 1;
            prop_assert_eq!(stamp.verify(executor, 2_000), Err(AuthError::BadSignature));
        }
    }
}
