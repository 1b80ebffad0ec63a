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

mod subtasks;

pub use self::subtasks::{
    FailureCode, MAX_DEPTH, MAX_SPAWN_SPEC_LEN, MAX_SUBTASKS, MAX_SUBTASKS_IN_FLIGHT,
    MAX_TASK_ARGS, MAX_TASK_INPUTS, MAX_VERIFY, RunStats, SpawnSpec, SubtaskResult, decode_result,
    encode_result,
};
pub use crate::cid::{CID_LEN, Cid, MAX_BLOCK_LEN, ParseCidError, Verified};

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
    /// The handle (a tensor's or a subtask's) is not live in this task (never made, freed, or
    /// another task's).
    BadHandle = -5,
    /// The tensors' shapes do not fit the operation.
    ShapeMismatch = -6,
    /// One of the task's quotas would be exceeded (tensor memory, outputs, subtasks); the
    /// task's log names which.
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
            Self::BadHandle => "handle is not live in this task",
            Self::ShapeMismatch => "tensor shapes do not match the operation",
            Self::QuotaExceeded => "task quota exceeded (its log names which)",
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
        [Self::Debug, Self::Info, Self::Warn, Self::Error]
            .into_iter()
            .find(|l| *l as i32 == code)
    }
}

/// The longest record `progress` takes, in bytes; longer is [`ErrorCode::TooLarge`].
pub const MAX_PROGRESS_LEN: usize = 4096;

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
        assert_eq!(
            pairs,
            vec![
                ("lr".into(), "0.1".into()),
                ("name".into(), "a=b\nc".into())
            ]
        );
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
        [Self::Axis0, Self::Axis1]
            .into_iter()
            .find(|a| *a as i32 == code)
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
        [Self::Mean, Self::PerRow]
            .into_iter()
            .find(|r| *r as i32 == code)
    }
}

/// The tensor calls' op codes: the `code` argument of `tensor_op`.
///
/// # The tensor calls
///
/// All return `i32`: `>= 0` is success (a handle, a byte count or 0), `< 0` an [`ErrorCode`].
/// Handles are positive `i32`s, valid only in the task that made them; every tensor is freed
/// when the task ends, and counted against the task's device-memory quota until then.
///
/// - `tensor_create(rows: i32, cols: i32, ptr: i32, len_bytes: i32) -> handle`: a new
///   `rows x cols` tensor from `len_bytes = rows * cols * 4` bytes of little-endian f32 at
///   `ptr` (any alignment). `TooLarge` when the size overflows, `ShapeMismatch` when
///   `len_bytes` does not match, `InvalidArgument` for a zero or negative dimension.
/// - `tensor_op(code: i32, param: i32, alpha: f32, a: i32, b: i32) -> handle`: one op, chosen
///   by `code` (a [`TensorOpCode`]) and `param`, on `a` (and `b` for two-input ops; `b` is
///   ignored for one-input ops). `param` is, by op:
///   - `Matmul`: flag bits [`MATMUL_TRANSPOSE_A`] | [`MATMUL_TRANSPOSE_B`];
///   - `Binary`: a [`BinaryOp`];
///   - `Activation`, `ActivationGrad`: a [`UnaryOp`];
///   - `Reduce`: `ReduceOp | ReduceAxis << REDUCE_AXIS_SHIFT` ([`reduce_param`]);
///   - `SoftmaxXent`: an [`XentReduction`];
///   - every other op: 0.
///
///   `alpha` is the factor of `Scale` and `Axpy` and ignored by the rest. An unknown code,
///   or a `param` the op does not define, is `InvalidArgument`. [`TensorOp`] is the decoded
///   form, and [`TensorOp::decode`] the one decoder.
/// - `tensor_shape(h: i32, out_ptr: i32) -> 0`: writes `rows, cols` as two little-endian
///   `u32`s (8 bytes) at `out_ptr`.
/// - `tensor_read(h: i32, ptr: i32, len_bytes: i32) -> bytes`: copies the tensor as
///   little-endian f32 into the guest buffer (any alignment) and returns the byte count;
///   `BufferTooSmall` if `len_bytes < rows * cols * 4`.
/// - `tensor_free(h: i32) -> 0`: frees the tensor; the handle is never valid again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum TensorOpCode {
    /// `op(A) @ op(B)`; inputs `a`, `b`; `param` holds the transpose flags.
    Matmul = 0,
    /// `a op b` element-wise (`b` may be a `1 x cols` row, broadcast); `param` a [`BinaryOp`].
    Binary = 1,
    /// `alpha * a`.
    Scale = 2,
    /// `alpha * a + b`, one shape.
    Axpy = 3,
    /// `f(a)`; `param` a [`UnaryOp`].
    Activation = 4,
    /// `b * f'(a)` with `a` the pre-activation input and `b` the upstream gradient.
    ActivationGrad = 5,
    /// Sum or mean of `a` along an axis; `param` from [`reduce_param`].
    Reduce = 6,
    /// Softmax cross-entropy of logits `a` (`r x c`) against labels `b` (`r x 1`); `param` an
    /// [`XentReduction`].
    SoftmaxXent = 7,
    /// `(softmax(a) - onehot(b)) / r`: the gradient of the mean loss.
    SoftmaxXentGrad = 8,
    /// `a^T`.
    Transpose = 9,
}

impl TensorOpCode {
    /// Every code, in code order.
    pub const ALL: [TensorOpCode; 10] = [
        Self::Matmul,
        Self::Binary,
        Self::Scale,
        Self::Axpy,
        Self::Activation,
        Self::ActivationGrad,
        Self::Reduce,
        Self::SoftmaxXent,
        Self::SoftmaxXentGrad,
        Self::Transpose,
    ];

    /// Decodes a raw op code; `None` if unknown.
    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|op| *op as i32 == code)
    }
}

/// Where a reduction's axis sits in `tensor_op`'s `param`: `ReduceOp | axis << 8`.
pub const REDUCE_AXIS_SHIFT: u32 = 8;

/// The `param` of a `Reduce` op.
pub const fn reduce_param(op: ReduceOp, axis: ReduceAxis) -> i32 {
    op as i32 | (axis as i32) << REDUCE_AXIS_SHIFT
}

/// A decoded `tensor_op` call: the op and its parameters, without the operands. The host's
/// backends execute this same type, so guest, ABI and kernels share one definition.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TensorOp {
    /// See [`TensorOpCode::Matmul`].
    Matmul {
        /// Use A transposed.
        trans_a: bool,
        /// Use B transposed.
        trans_b: bool,
    },
    /// See [`TensorOpCode::Binary`].
    Binary(BinaryOp),
    /// See [`TensorOpCode::Scale`].
    Scale {
        /// The factor.
        alpha: f32,
    },
    /// See [`TensorOpCode::Axpy`].
    Axpy {
        /// The factor on `a`.
        alpha: f32,
    },
    /// See [`TensorOpCode::Activation`].
    Activation(UnaryOp),
    /// See [`TensorOpCode::ActivationGrad`].
    ActivationGrad(UnaryOp),
    /// See [`TensorOpCode::Reduce`].
    Reduce {
        /// Sum or mean.
        op: ReduceOp,
        /// The axis that collapses.
        axis: ReduceAxis,
    },
    /// See [`TensorOpCode::SoftmaxXent`].
    SoftmaxXent(XentReduction),
    /// See [`TensorOpCode::SoftmaxXentGrad`].
    SoftmaxXentGrad,
    /// See [`TensorOpCode::Transpose`].
    Transpose,
}

impl TensorOp {
    /// Decodes `tensor_op`'s `(code, param, alpha)`; `None` (the host answers
    /// `InvalidArgument`) for an unknown code or a `param` the op does not define.
    pub fn decode(code: i32, param: i32, alpha: f32) -> Option<Self> {
        let no_param = |op: Self| (param == 0).then_some(op);
        match TensorOpCode::from_code(code)? {
            TensorOpCode::Matmul => (param & !MATMUL_FLAGS_MASK == 0).then_some(Self::Matmul {
                trans_a: param & MATMUL_TRANSPOSE_A != 0,
                trans_b: param & MATMUL_TRANSPOSE_B != 0,
            }),
            TensorOpCode::Binary => BinaryOp::from_code(param).map(Self::Binary),
            TensorOpCode::Scale => no_param(Self::Scale { alpha }),
            TensorOpCode::Axpy => no_param(Self::Axpy { alpha }),
            TensorOpCode::Activation => UnaryOp::from_code(param).map(Self::Activation),
            TensorOpCode::ActivationGrad => UnaryOp::from_code(param).map(Self::ActivationGrad),
            TensorOpCode::Reduce => {
                let op = ReduceOp::from_code(param & 0xff)?;
                let axis = ReduceAxis::from_code(param >> REDUCE_AXIS_SHIFT)?;
                Some(Self::Reduce { op, axis })
            }
            TensorOpCode::SoftmaxXent => XentReduction::from_code(param).map(Self::SoftmaxXent),
            TensorOpCode::SoftmaxXentGrad => no_param(Self::SoftmaxXentGrad),
            TensorOpCode::Transpose => no_param(Self::Transpose),
        }
    }

    /// Encodes the op as `tensor_op`'s `(code, param, alpha)`.
    pub fn encode(self) -> (i32, i32, f32) {
        let (code, param, alpha) = match self {
            Self::Matmul { trans_a, trans_b } => (
                TensorOpCode::Matmul,
                if trans_a { MATMUL_TRANSPOSE_A } else { 0 }
                    | if trans_b { MATMUL_TRANSPOSE_B } else { 0 },
                0.0,
            ),
            Self::Binary(op) => (TensorOpCode::Binary, op as i32, 0.0),
            Self::Scale { alpha } => (TensorOpCode::Scale, 0, alpha),
            Self::Axpy { alpha } => (TensorOpCode::Axpy, 0, alpha),
            Self::Activation(op) => (TensorOpCode::Activation, op as i32, 0.0),
            Self::ActivationGrad(op) => (TensorOpCode::ActivationGrad, op as i32, 0.0),
            Self::Reduce { op, axis } => (TensorOpCode::Reduce, reduce_param(op, axis), 0.0),
            Self::SoftmaxXent(r) => (TensorOpCode::SoftmaxXent, r as i32, 0.0),
            Self::SoftmaxXentGrad => (TensorOpCode::SoftmaxXentGrad, 0, 0.0),
            Self::Transpose => (TensorOpCode::Transpose, 0, 0.0),
        };
        (code as i32, param, alpha)
    }

    /// The op's name, for errors and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Matmul { .. } => "matmul",
            Self::Binary(BinaryOp::Add) => "add",
            Self::Binary(BinaryOp::Sub) => "sub",
            Self::Binary(BinaryOp::Mul) => "mul",
            Self::Scale { .. } => "scale",
            Self::Axpy { .. } => "axpy",
            Self::Activation(UnaryOp::Relu) => "relu",
            Self::Activation(UnaryOp::Sigmoid) => "sigmoid",
            Self::Activation(UnaryOp::Tanh) => "tanh",
            Self::ActivationGrad(UnaryOp::Relu) => "relu_grad",
            Self::ActivationGrad(UnaryOp::Sigmoid) => "sigmoid_grad",
            Self::ActivationGrad(UnaryOp::Tanh) => "tanh_grad",
            Self::Reduce {
                op: ReduceOp::Sum, ..
            } => "sum",
            Self::Reduce {
                op: ReduceOp::Mean, ..
            } => "mean",
            Self::SoftmaxXent(_) => "softmax_xent",
            Self::SoftmaxXentGrad => "softmax_xent_grad",
            Self::Transpose => "transpose",
        }
    }

    /// How many tensors the op takes: 1 or 2.
    pub fn arity(self) -> usize {
        match self {
            Self::Scale { .. } | Self::Activation(_) | Self::Reduce { .. } | Self::Transpose => 1,
            _ => 2,
        }
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

    #[test]
    fn tensor_ops_round_trip_and_reject_unknown_params() {
        for code in TensorOpCode::ALL {
            assert_eq!(TensorOpCode::from_code(code as i32), Some(code));
        }
        let ops = [
            TensorOp::Matmul {
                trans_a: true,
                trans_b: false,
            },
            TensorOp::Matmul {
                trans_a: false,
                trans_b: true,
            },
            TensorOp::Binary(BinaryOp::Mul),
            TensorOp::Scale { alpha: 2.5 },
            TensorOp::Axpy { alpha: -1.0 },
            TensorOp::Activation(UnaryOp::Tanh),
            TensorOp::ActivationGrad(UnaryOp::Sigmoid),
            TensorOp::Reduce {
                op: ReduceOp::Mean,
                axis: ReduceAxis::Axis1,
            },
            TensorOp::SoftmaxXent(XentReduction::PerRow),
            TensorOp::SoftmaxXentGrad,
            TensorOp::Transpose,
        ];
        for op in ops {
            let (code, param, alpha) = op.encode();
            assert_eq!(TensorOp::decode(code, param, alpha), Some(op));
        }
        assert_eq!(reduce_param(ReduceOp::Mean, ReduceAxis::Axis1), 0x101);
        assert_eq!(TensorOp::decode(10, 0, 0.0), None);
        assert_eq!(TensorOp::decode(-1, 0, 0.0), None);
        assert_eq!(TensorOp::decode(TensorOpCode::Matmul as i32, 4, 0.0), None);
        assert_eq!(TensorOp::decode(TensorOpCode::Binary as i32, 3, 0.0), None);
        assert_eq!(
            TensorOp::decode(TensorOpCode::Reduce as i32, 0x200, 0.0),
            None
        );
        assert_eq!(
            TensorOp::decode(TensorOpCode::Reduce as i32, 0x10000, 0.0),
            None
        );
        assert_eq!(
            TensorOp::decode(TensorOpCode::Transpose as i32, 1, 0.0),
            None
        );
    }

    #[test]
    fn every_defined_op_decodes_under_its_own_name() {
        let params = |code: TensorOpCode| -> Vec<i32> {
            match code {
                TensorOpCode::Matmul => vec![0, 1, 2, 3],
                TensorOpCode::Binary => BinaryOp::ALL.iter().map(|&o| o as i32).collect(),
                TensorOpCode::Activation | TensorOpCode::ActivationGrad => {
                    UnaryOp::ALL.iter().map(|&o| o as i32).collect()
                }
                TensorOpCode::Reduce => ReduceOp::ALL
                    .iter()
                    .flat_map(|&o| {
                        [ReduceAxis::Axis0, ReduceAxis::Axis1].map(|a| reduce_param(o, a))
                    })
                    .collect(),
                TensorOpCode::SoftmaxXent => {
                    vec![XentReduction::Mean as i32, XentReduction::PerRow as i32]
                }
                _ => vec![0],
            }
        };
        let mut names = std::collections::HashSet::new();
        for code in TensorOpCode::ALL {
            for param in params(code) {
                let op = TensorOp::decode(code as i32, param, 0.5).expect("defined op decodes");
                assert!(matches!(op.arity(), 1 | 2), "{op:?}");
                names.insert(op.name());
            }
        }
        // Matmul's four transpose variants and the reductions' two axes share a name.
        assert_eq!(names.len(), 17, "{names:?}");
    }
}
