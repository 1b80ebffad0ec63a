//! The `shoal_v1` host ABI: the one definition of its error codes, op codes and encodings.
//!
//! Both sides import this module: the guest SDK to decode what the host returns, the host to
//! encode it. Every import returns an `i32`: `>= 0` is success (or a length, count or handle),
//! `< 0` is an [`ErrorCode`].

/// The wasm import module every host function lives in.
pub const IMPORT_MODULE: &str = "shoal_v1";

/// Exported task entry points are named `shoal_task:<name>`; the prefix keeps `_start`,
/// `memory` and friends from ever being mistaken for tasks.
pub const TASK_EXPORT_PREFIX: &str = "shoal_task:";

/// Length of a content identifier (a blake3 hash) in bytes.
pub const CID_LEN: usize = 32;

/// Guest-visible error codes. Recoverable conditions come back as one of these; fatal ones
/// (memory, time, quota exhaustion of the sandbox itself) end the task with a typed failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
#[non_exhaustive]
pub enum ErrorCode {
    /// A `(ptr, len)` pair does not lie inside the guest's memory.
    BadPointer = -1,
    /// No input, argument or block by that name or index.
    NotFound = -2,
    /// The guest buffer is too small for the value; ask for the length first.
    BufferTooSmall = -3,
    /// An argument is out of range (unknown op code, bad flag, non-UTF-8 name, ...).
    InvalidArgument = -4,
    /// The tensor handle is not live in this task (never made, freed, or another task's).
    BadHandle = -5,
    /// The tensors' shapes do not fit the operation.
    ShapeMismatch = -6,
    /// The task's device-memory (tensor) quota would be exceeded.
    QuotaExceeded = -7,
    /// A size computation overflowed or exceeds a hard limit.
    TooLarge = -8,
    /// The host could not complete the call (storage or device failure); the task may retry.
    Unavailable = -9,
    /// The task is not allowed to do this.
    Denied = -10,
}

impl ErrorCode {
    /// Every code, for exhaustive tests and decoding.
    pub const ALL: [ErrorCode; 10] = [
        Self::BadPointer,
        Self::NotFound,
        Self::BufferTooSmall,
        Self::InvalidArgument,
        Self::BadHandle,
        Self::ShapeMismatch,
        Self::QuotaExceeded,
        Self::TooLarge,
        Self::Unavailable,
        Self::Denied,
    ];

    /// The code as the raw `i32` the ABI returns.
    pub const fn code(self) -> i32 {
        self as i32
    }

    /// Decodes a negative return value; `None` for success values and unknown codes.
    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }

    /// A short human-readable description.
    pub const fn describe(self) -> &'static str {
        match self {
            Self::BadPointer => "pointer or length outside guest memory",
            Self::NotFound => "not found",
            Self::BufferTooSmall => "buffer too small",
            Self::InvalidArgument => "invalid argument",
            Self::BadHandle => "tensor handle is not live in this task",
            Self::ShapeMismatch => "tensor shapes do not match the operation",
            Self::QuotaExceeded => "task device-memory quota exceeded",
            Self::TooLarge => "size overflow or beyond a hard limit",
            Self::Unavailable => "host resource unavailable",
            Self::Denied => "denied",
        }
    }
}

impl core::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} ({})", self.describe(), self.code())
    }
}

/// Log levels accepted by `shoal_v1::log`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(i32)]
pub enum LogLevel {
    /// Fine-grained detail.
    Debug = 0,
    /// Normal progress.
    Info = 1,
    /// Something odd that the task survived.
    Warn = 2,
    /// Something failed.
    Error = 3,
}

impl LogLevel {
    /// Decodes a raw level; `None` if out of range.
    pub fn from_code(code: i32) -> Option<Self> {
        [Self::Debug, Self::Info, Self::Warn, Self::Error].into_iter().find(|l| *l as i32 == code)
    }
}

/// The status a task entry point returns: 0 for success, anything else is the task's own
/// failure (its message is whatever it logged).
pub const TASK_OK: i32 = 0;
/// The status the entry macro returns when the task's body returned `Err`.
pub const TASK_FAILED: i32 = 1;

/// Encodes task arguments: `u32 count`, then per pair `u32 key_len, key, u32 value_len,
/// value`, all little-endian. Keys are unique; the host sorts them by key.
pub fn encode_args<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let pairs: Vec<_> = pairs.into_iter().collect();
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        for part in [k, v] {
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
            out.extend_from_slice(part.as_bytes());
        }
    }
    out
}

/// Decodes [`encode_args`]' format; `None` if malformed.
pub fn decode_args(mut bytes: &[u8]) -> Option<Vec<(String, String)>> {
    fn take<'b>(bytes: &mut &'b [u8], n: usize) -> Option<&'b [u8]> {
        if bytes.len() < n {
            return None;
        }
        let (head, tail) = bytes.split_at(n);
        *bytes = tail;
        Some(head)
    }
    fn take_u32(bytes: &mut &[u8]) -> Option<usize> {
        let raw = take(bytes, 4)?;
        Some(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize)
    }
    let count = take_u32(&mut bytes)?;
    let mut pairs = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let klen = take_u32(&mut bytes)?;
        let k = String::from_utf8(take(&mut bytes, klen)?.to_vec()).ok()?;
        let vlen = take_u32(&mut bytes)?;
        let v = String::from_utf8(take(&mut bytes, vlen)?.to_vec()).ok()?;
        pairs.push((k, v));
    }
    bytes.is_empty().then_some(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip_and_are_negative() {
        for code in ErrorCode::ALL {
            assert!(code.code() < 0);
            assert_eq!(ErrorCode::from_code(code.code()), Some(code));
        }
        assert_eq!(ErrorCode::from_code(0), None);
    }

    #[test]
    fn args_round_trip() {
        let bytes = encode_args([("lr", "0.1"), ("name", "a=b\nc")]);
        let pairs = decode_args(&bytes).expect("decodes");
        assert_eq!(pairs, vec![("lr".into(), "0.1".into()), ("name".into(), "a=b\nc".into())]);
        assert_eq!(decode_args(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode_args(&[0xff, 0xff, 0xff, 0xff]), None);
    }
}

// ---- tensors ----
//
// Op codes and flags of the tensor calls. Tensors are f32, row-major, 2-D (`rows x cols`);
// handles are positive `i32`s. The host's `compute` module uses these same enums, so the
// semantics below are the one definition.

/// Bit in a matmul's `flags`: use A transposed (A is stored `k x m`).
pub const MATMUL_TRANSPOSE_A: i32 = 1;
/// Bit in a matmul's `flags`: use B transposed (B is stored `n x k`).
pub const MATMUL_TRANSPOSE_B: i32 = 2;
/// Every valid matmul flag bit; any other bit set is `InvalidArgument`.
pub const MATMUL_FLAGS_MASK: i32 = MATMUL_TRANSPOSE_A | MATMUL_TRANSPOSE_B;

/// Element-wise binary ops `out = a op b`. `b` has the shape of `a`, or is `1 x cols`
/// and is broadcast over every row of `a` (a bias row).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum BinaryOp {
    /// `a + b`.
    Add = 0,
    /// `a - b`.
    Sub = 1,
    /// `a * b` (Hadamard product).
    Mul = 2,
}

impl BinaryOp {
    /// Every op, in code order.
    pub const ALL: [BinaryOp; 3] = [Self::Add, Self::Sub, Self::Mul];

    /// Decodes a raw op code; `None` if unknown.
    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|op| *op as i32 == code)
    }
}

/// Activation functions. The gradient call of each takes the pre-activation input `x` and
/// the upstream gradient `dy`, and returns `dy * f'(x)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum UnaryOp {
    /// `max(x, 0)`; its gradient is `dy` where `x > 0`, else 0.
    Relu = 0,
    /// `1 / (1 + exp(-x))`.
    Sigmoid = 1,
    /// `tanh(x)`.
    Tanh = 2,
}

impl UnaryOp {
    /// Every op, in code order.
    pub const ALL: [UnaryOp; 3] = [Self::Relu, Self::Sigmoid, Self::Tanh];

    /// Decodes a raw op code; `None` if unknown.
    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|op| *op as i32 == code)
    }
}

/// Reductions along one axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum ReduceOp {
    /// Sum of the elements.
    Sum = 0,
    /// Arithmetic mean of the elements.
    Mean = 1,
}

impl ReduceOp {
    /// Every op, in code order.
    pub const ALL: [ReduceOp; 2] = [Self::Sum, Self::Mean];

    /// Decodes a raw op code; `None` if unknown.
    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|op| *op as i32 == code)
    }
}

/// The axis a reduction collapses (numpy's convention).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum ReduceAxis {
    /// Collapse the rows: `rows x cols` becomes `1 x cols` (one value per column).
    Axis0 = 0,
    /// Collapse the columns: `rows x cols` becomes `rows x 1` (one value per row).
    Axis1 = 1,
}

impl ReduceAxis {
    /// Decodes a raw axis; `None` if not 0 or 1.
    pub fn from_code(code: i32) -> Option<Self> {
        [Self::Axis0, Self::Axis1].into_iter().find(|a| *a as i32 == code)
    }
}

/// What softmax-cross-entropy's forward call returns. Labels are a `rows x 1` tensor of
/// class indices stored as f32; a label that is not an integer in `0..cols` makes that row's
/// loss (and gradient row) NaN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum XentReduction {
    /// The mean loss over rows, a `1 x 1` tensor.
    Mean = 0,
    /// One loss per row, a `rows x 1` tensor.
    PerRow = 1,
}

impl XentReduction {
    /// Decodes a raw code; `None` if unknown.
    pub fn from_code(code: i32) -> Option<Self> {
        [Self::Mean, Self::PerRow].into_iter().find(|r| *r as i32 == code)
    }
}

#[cfg(test)]
mod tensor_code_tests {
    use super::*;

    #[test]
    fn tensor_codes_round_trip() {
        for op in BinaryOp::ALL {
            assert_eq!(BinaryOp::from_code(op as i32), Some(op));
        }
        for op in UnaryOp::ALL {
            assert_eq!(UnaryOp::from_code(op as i32), Some(op));
        }
        for op in ReduceOp::ALL {
            assert_eq!(ReduceOp::from_code(op as i32), Some(op));
        }
        assert_eq!(ReduceAxis::from_code(1), Some(ReduceAxis::Axis1));
        assert_eq!(XentReduction::from_code(1), Some(XentReduction::PerRow));
        assert_eq!(BinaryOp::from_code(3), None);
        assert_eq!(UnaryOp::from_code(-1), None);
        assert_eq!(ReduceAxis::from_code(2), None);
        assert_eq!(MATMUL_FLAGS_MASK & !3, 0);
    }
}
