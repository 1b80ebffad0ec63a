//! Tensors and the backends that run their math: wgpu compute shaders, or native CPU kernels.
//!
//! Tensors are 2-D (`rows x cols`), f32, row-major, and stay resident in the backend's memory
//! between ops; reading one back is an explicit call. A task sees tensors only through its
//! [`TensorTable`], which hands out `u32` handles and counts bytes against a quota.
//!
//! Every [`TensorOp`] (the ABI's own type) has the same semantics on every backend;
//! [`output_shape`] is the one place that decides which shapes fit an op.
//!
//! ```no_run
//! use shoal_host::compute::{DeviceChoice, Shape, TensorTable, select_backend};
//!
//! # fn main() -> Result<(), shoal_host::compute::ComputeError> {
//! let backend = select_backend(DeviceChoice::Auto, false)?;
//! let mut table = TensorTable::new(backend, 64 << 20);
//! let a = table.create(&[1.0, 2.0, 3.0, 4.0], Shape::new(2, 2))?;
//! let b = table.matmul(a, a, false, true)?;
//! assert_eq!(table.read(b)?, vec![5.0, 11.0, 11.0, 25.0]);
//! # Ok(())
//! # }
//! ```

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use shoal::abi::ErrorCode;
pub use shoal::abi::{BinaryOp, ReduceAxis, ReduceOp, TensorOp, UnaryOp, XentReduction};

mod budget;
mod cpu;
mod deterministic;
mod gpu;
mod pool;
mod table;

pub use budget::{OpBudget, Overrun, thread_cpu_time};
pub use cpu::CpuBackend;
pub use deterministic::DeterministicCpuBackend;
pub use gpu::{GpuBackend, SHADERS};
pub use table::{MAX_LIVE_TENSORS, MAX_TENSOR_ALLOCATIONS, TensorTable};

/// The shape of a 2-D tensor: `rows x cols` f32 values, row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Number of rows.
    pub rows: u32,
    /// Number of columns.
    pub cols: u32,
}

impl Shape {
    /// A `rows x cols` shape.
    pub const fn new(rows: u32, cols: u32) -> Self {
        Self { rows, cols }
    }

    /// The number of elements, checked: both dimensions must be non-zero.
    ///
    /// # Errors
    ///
    /// [`ComputeError::EmptyShape`] if a dimension is zero, [`ComputeError::TooLarge`] if the
    /// element count or its size in bytes overflows.
    pub fn elements(self) -> Result<usize, ComputeError> {
        self.byte_size()?;
        // byte_size() proved rows * cols * 4 fits a usize, so this cannot overflow.
        Ok(self.rows as usize * self.cols as usize)
    }

    /// The size in bytes (`rows * cols * 4`), overflow-checked against both `u64` and `usize`.
    ///
    /// # Errors
    ///
    /// As [`Shape::elements`].
    pub fn byte_size(self) -> Result<u64, ComputeError> {
        if self.rows == 0 || self.cols == 0 {
            return Err(ComputeError::EmptyShape { shape: self });
        }
        let too_large = || ComputeError::TooLarge { shape: self };
        let bytes = (self.rows as usize)
            .checked_mul(self.cols as usize)
            .and_then(|n| n.checked_mul(4))
            .ok_or_else(too_large)?;
        // isize::MAX is the most any Rust allocation may hold.
        if bytes > isize::MAX as usize {
            return Err(too_large());
        }
        u64::try_from(bytes).map_err(|_| too_large())
    }

    /// The shape with rows and columns swapped.
    pub const fn transposed(self) -> Self {
        Self::new(self.cols, self.rows)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.rows, self.cols)
    }
}

/// Everything that can go wrong in a tensor call. Each maps to one guest-visible
/// [`ErrorCode`] through [`ComputeError::code`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ComputeError {
    /// The handle was never issued by this table, or was freed.
    #[error("tensor handle {handle} is not live in this task (never created, or freed)")]
    BadHandle {
        /// The handle the caller passed.
        handle: u32,
    },
    /// The handle carries another table's salt: it belongs to another task.
    #[error("tensor handle {handle} belongs to another task's table")]
    ForeignHandle {
        /// The handle the caller passed.
        handle: u32,
    },
    /// Two shapes do not fit an op.
    #[error("shapes {lhs} and {rhs} do not fit {op}")]
    ShapeMismatch {
        /// The op's name.
        op: &'static str,
        /// The first operand's shape.
        lhs: Shape,
        /// The second operand's shape.
        rhs: Shape,
    },
    /// A data slice's length does not match the shape it was given with.
    #[error("{got} values do not fill a {shape} tensor ({expected} values)")]
    DataLength {
        /// The shape asked for.
        shape: Shape,
        /// `rows * cols`.
        expected: usize,
        /// The slice length given.
        got: usize,
    },
    /// A dimension is zero.
    #[error("tensor shape {shape} has a zero dimension")]
    EmptyShape {
        /// The offending shape.
        shape: Shape,
    },
    /// `rows * cols * 4` overflows.
    #[error("a {shape} f32 tensor is too large: its size in bytes overflows")]
    TooLarge {
        /// The offending shape.
        shape: Shape,
    },
    /// A size is beyond what the device can hold in one buffer or dispatch.
    #[error("{what} needs {needed}, beyond the device limit of {limit}")]
    DeviceLimit {
        /// What hit the limit (e.g. "a storage buffer binding, in bytes").
        what: &'static str,
        /// What the op needs.
        needed: u64,
        /// The device's limit.
        limit: u64,
    },
    /// The task's device-memory quota would be exceeded.
    #[error(
        "tensor of {requested} bytes would exceed the task's device-memory quota \
         ({used} of {quota} bytes in use)"
    )]
    QuotaExceeded {
        /// Bytes the new tensor needs.
        requested: u64,
        /// Bytes already held by the table.
        used: u64,
        /// The table's quota.
        quota: u64,
    },
    /// The table holds as many live tensors as it may.
    #[error("the task already holds {limit} live tensors, the most it may")]
    TooManyTensors {
        /// The limit.
        limit: usize,
    },
    /// The table has issued every handle it can; handles are never reused.
    #[error("the task has created {limit} tensors, the most one task may create")]
    HandlesExhausted {
        /// The limit.
        limit: u32,
    },
    /// The output buffer is shorter than the tensor.
    #[error("buffer of {got} values is too small for a tensor of {needed} values")]
    BufferTooSmall {
        /// Values in the tensor.
        needed: usize,
        /// Values the buffer holds.
        got: usize,
    },
    /// An op got the wrong number of inputs.
    #[error("{op} takes {expected} tensors, got {got}")]
    Arity {
        /// The op's name.
        op: &'static str,
        /// Inputs it takes.
        expected: usize,
        /// Inputs it got.
        got: usize,
    },
    /// A tensor was made by another backend than the one asked to use it.
    #[error("tensor lives on the {tensor} backend, not on {backend}")]
    WrongBackend {
        /// Where the tensor lives.
        tensor: &'static str,
        /// The backend asked to use it.
        backend: &'static str,
    },
    /// An op code or flag the ABI does not define.
    #[error("unknown {what} code {code}")]
    UnknownCode {
        /// Which kind of code (e.g. "binary op").
        what: &'static str,
        /// The raw value.
        code: i32,
    },
    /// No GPU adapter fits the request.
    #[error("no usable GPU adapter: {reason}")]
    NoAdapter {
        /// Why, including what was found.
        reason: String,
    },
    /// The device failed (out of memory, lost, mapping failed).
    #[error("GPU device error: {message}")]
    Device {
        /// wgpu's description.
        message: String,
    },
    /// The op was stopped (or never started) because its task is out of time or CPU.
    #[error("the op was stopped: {overrun}")]
    Cancelled {
        /// Which limit ran out.
        overrun: Overrun,
    },
}

impl ComputeError {
    /// The guest-visible error code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadHandle { .. } | Self::ForeignHandle { .. } => ErrorCode::BadHandle,
            Self::ShapeMismatch { .. } | Self::DataLength { .. } => ErrorCode::ShapeMismatch,
            Self::QuotaExceeded { .. } | Self::TooManyTensors { .. } => ErrorCode::QuotaExceeded,
            Self::TooLarge { .. } | Self::DeviceLimit { .. } | Self::HandlesExhausted { .. } => {
                ErrorCode::TooLarge
            }
            Self::BufferTooSmall { .. } => ErrorCode::BufferTooSmall,
            Self::EmptyShape { .. }
            | Self::Arity { .. }
            | Self::WrongBackend { .. }
            | Self::UnknownCode { .. } => ErrorCode::InvalidArgument,
            Self::NoAdapter { .. } | Self::Device { .. } | Self::Cancelled { .. } => {
                ErrorCode::Unavailable
            }
        }
    }
}

/// The shape of `op`'s result for inputs of these shapes: the one place that decides which
/// shapes fit an op, on every backend.
///
/// # Errors
///
/// [`ComputeError::Arity`] for the wrong number of inputs, [`ComputeError::ShapeMismatch`]
/// when the shapes do not fit the op.
pub fn output_shape(op: TensorOp, inputs: &[Shape]) -> Result<Shape, ComputeError> {
    let name = op.name();
    if inputs.len() != op.arity() {
        return Err(ComputeError::Arity {
            op: name,
            expected: op.arity(),
            got: inputs.len(),
        });
    }
    let a = inputs[0];
    let b = inputs.get(1).copied().unwrap_or(a);
    let mismatch = || ComputeError::ShapeMismatch {
        op: name,
        lhs: a,
        rhs: b,
    };
    let labels_fit = b == Shape::new(a.rows, 1);
    match op {
        TensorOp::Matmul { trans_a, trans_b } => {
            let op_a = if trans_a { a.transposed() } else { a };
            let op_b = if trans_b { b.transposed() } else { b };
            if op_a.cols != op_b.rows {
                return Err(mismatch());
            }
            Ok(Shape::new(op_a.rows, op_b.cols))
        }
        TensorOp::Binary(_) if b == a || (b.rows == 1 && b.cols == a.cols) => Ok(a),
        TensorOp::Axpy { .. } | TensorOp::ActivationGrad(_) if a == b => Ok(a),
        TensorOp::Scale { .. } | TensorOp::Activation(_) => Ok(a),
        TensorOp::Reduce { axis, .. } => Ok(match axis {
            ReduceAxis::Axis0 => Shape::new(1, a.cols),
            ReduceAxis::Axis1 => Shape::new(a.rows, 1),
        }),
        TensorOp::SoftmaxXent(XentReduction::Mean) if labels_fit => Ok(Shape::new(1, 1)),
        TensorOp::SoftmaxXent(XentReduction::PerRow) if labels_fit => Ok(Shape::new(a.rows, 1)),
        TensorOp::SoftmaxXentGrad if labels_fit => Ok(a),
        TensorOp::Transpose => Ok(a.transposed()),
        TensorOp::Binary(_)
        | TensorOp::Axpy { .. }
        | TensorOp::ActivationGrad(_)
        | TensorOp::SoftmaxXent(_)
        | TensorOp::SoftmaxXentGrad => Err(mismatch()),
    }
}

/// Which kind of backend a [`Backend`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// Native CPU kernels.
    Cpu,
    /// wgpu compute shaders on a GPU adapter (possibly a software one, in tests).
    Gpu,
}

/// A tensor held by a backend: host memory for [`CpuBackend`], a device buffer for
/// [`GpuBackend`]. Only the backend that made it can use it.
#[derive(Debug)]
pub struct Tensor {
    shape: Shape,
    storage: Storage,
    /// Its bytes in its backend's [`Backend::live_bytes`], given back when it is dropped.
    _charge: Charge,
}

#[derive(Debug)]
enum Storage {
    Host(Vec<f32>),
    Device(wgpu::Buffer),
}

/// The bytes of tensor data a backend holds now, over every table: each [`Tensor`] adds its
/// storage's size when it is made and takes it back when it is dropped, so a leaked tensor
/// shows as bytes that never come back.
#[derive(Debug, Default)]
struct LiveBytes(Arc<AtomicU64>);

impl LiveBytes {
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// A tensor of `shape` held in `storage`, counted until it is dropped.
    fn tensor(&self, shape: Shape, storage: Storage) -> Tensor {
        let bytes = match &storage {
            Storage::Host(data) => std::mem::size_of_val(data.as_slice()) as u64,
            Storage::Device(buffer) => buffer.size(),
        };
        self.0.fetch_add(bytes, Ordering::Relaxed);
        Tensor {
            shape,
            storage,
            _charge: Charge {
                bytes,
                live: self.0.clone(),
            },
        }
    }
}

/// One tensor's share of its backend's [`LiveBytes`].
#[derive(Debug)]
struct Charge {
    bytes: u64,
    live: Arc<AtomicU64>,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.live.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Tensor {
    /// The tensor's shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Which backend's memory holds it.
    pub fn kind(&self) -> BackendKind {
        match self.storage {
            Storage::Host(_) => BackendKind::Cpu,
            Storage::Device(_) => BackendKind::Gpu,
        }
    }
}

/// A place to run tensor ops. One backend is shared by the whole node (`Arc<dyn Backend>`);
/// each task holds its tensors in its own [`TensorTable`].
pub trait Backend: Send + Sync + fmt::Debug {
    /// CPU or GPU.
    fn kind(&self) -> BackendKind;

    /// A human-readable description, e.g. the adapter's name.
    fn name(&self) -> &str;

    /// Makes `data` a tensor of `shape`: the cpu backend keeps the buffer, the gpu backend
    /// copies it to the device.
    ///
    /// # Errors
    ///
    /// [`ComputeError::DataLength`] if `data.len()` is not `rows * cols`; size and device
    /// errors.
    fn upload(&self, data: Vec<f32>, shape: Shape) -> Result<Tensor, ComputeError>;

    /// Copies the tensor's values into the first `rows * cols` elements of `out`.
    ///
    /// # Errors
    ///
    /// [`ComputeError::BufferTooSmall`] if `out` is too short; device errors.
    fn read_into(&self, tensor: &Tensor, out: &mut [f32]) -> Result<(), ComputeError>;

    /// Runs `op` on `inputs` within `budget` and returns the new tensor. Threads other than
    /// the caller's charge their CPU time to `budget`.
    ///
    /// # Errors
    ///
    /// [`ComputeError::Cancelled`] if `budget` ran out before or during the op; shape errors
    /// from [`output_shape`], [`ComputeError::WrongBackend`], size and device errors.
    fn execute(
        &self,
        op: TensorOp,
        inputs: &[&Tensor],
        budget: &OpBudget,
    ) -> Result<Tensor, ComputeError>;

    /// Bytes of tensor data this backend holds now, over every table: host memory for the
    /// cpu backend, device buffers for the gpu one. Once every tensor it made is dropped it
    /// is back to 0, so tests (and operators) can see a leak.
    fn live_bytes(&self) -> u64;
}

/// Which device the node should compute on (`--device auto|gpu|cpu`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DeviceChoice {
    /// A hardware GPU if there is one, else the CPU.
    #[default]
    Auto,
    /// A GPU, or an error.
    Gpu,
    /// Native CPU kernels.
    Cpu,
}

/// Builds the node's backend. Call it once and share the result: a GPU backend owns the
/// node's one device.
///
/// `Auto` takes a hardware GPU adapter if there is one, else the CPU. A software adapter
/// (llvmpipe, lavapipe: wgpu's `DeviceType::Cpu`) is far slower than the native CPU kernels,
/// so it is only taken for `Gpu` with `allow_software` (as the tests do, to run the shaders).
///
/// # Errors
///
/// [`ComputeError::NoAdapter`] for `Gpu` when no adapter fits (the message lists what was
/// found); [`ComputeError::Device`] if the device cannot be opened.
pub fn select_backend(
    choice: DeviceChoice,
    allow_software: bool,
) -> Result<Arc<dyn Backend>, ComputeError> {
    match choice {
        DeviceChoice::Cpu => Ok(Arc::new(CpuBackend::new())),
        DeviceChoice::Gpu => Ok(Arc::new(GpuBackend::new(allow_software)?)),
        DeviceChoice::Auto => match GpuBackend::new(false) {
            Ok(gpu) => Ok(Arc::new(gpu)),
            Err(err) => {
                tracing::info!(%err, "no hardware GPU; using the cpu backend");
                Ok(Arc::new(CpuBackend::new()))
            }
        },
    }
}

/// Checks an op's inputs and returns its output shape: the shared prologue of every backend.
fn check_inputs(op: TensorOp, inputs: &[&Tensor]) -> Result<Shape, ComputeError> {
    let shapes: Vec<Shape> = inputs.iter().map(|t| t.shape).collect();
    output_shape(op, &shapes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_sizes_are_checked() {
        assert_eq!(Shape::new(3, 4).byte_size().unwrap(), 48);
        assert!(matches!(
            Shape::new(0, 4).elements(),
            Err(ComputeError::EmptyShape { .. })
        ));
        let huge = Shape::new(u32::MAX, u32::MAX);
        // 2^64 * 4 overflows u64 everywhere; on 32-bit hosts even smaller shapes do.
        assert!(matches!(
            huge.byte_size(),
            Err(ComputeError::TooLarge { .. })
        ));
        assert_eq!(huge.byte_size().unwrap_err().code(), ErrorCode::TooLarge);
    }

    #[test]
    fn output_shapes() {
        let mm = |ta, tb, a, b| {
            let op = TensorOp::Matmul {
                trans_a: ta,
                trans_b: tb,
            };
            output_shape(op, &[a, b])
        };
        assert_eq!(
            mm(false, false, Shape::new(3, 4), Shape::new(4, 5)).unwrap(),
            Shape::new(3, 5)
        );
        assert_eq!(
            mm(true, false, Shape::new(4, 3), Shape::new(4, 5)).unwrap(),
            Shape::new(3, 5)
        );
        assert_eq!(
            mm(false, true, Shape::new(3, 4), Shape::new(5, 4)).unwrap(),
            Shape::new(3, 5)
        );
        assert_eq!(
            mm(true, true, Shape::new(4, 3), Shape::new(5, 4)).unwrap(),
            Shape::new(3, 5)
        );
        let err = mm(false, false, Shape::new(3, 4), Shape::new(5, 6)).unwrap_err();
        assert_eq!(err.to_string(), "shapes 3x4 and 5x6 do not fit matmul");
        assert_eq!(err.code(), ErrorCode::ShapeMismatch);

        let add = TensorOp::Binary(BinaryOp::Add);
        assert_eq!(
            output_shape(add, &[Shape::new(3, 4), Shape::new(1, 4)]).unwrap(),
            Shape::new(3, 4)
        );
        assert!(output_shape(add, &[Shape::new(3, 4), Shape::new(3, 1)]).is_err());
        assert!(matches!(
            output_shape(add, &[Shape::new(3, 4)]),
            Err(ComputeError::Arity { .. })
        ));
        let xent = TensorOp::SoftmaxXent(XentReduction::Mean);
        assert_eq!(
            output_shape(xent, &[Shape::new(3, 4), Shape::new(3, 1)]).unwrap(),
            Shape::new(1, 1)
        );
        assert!(output_shape(xent, &[Shape::new(3, 4), Shape::new(4, 1)]).is_err());
        let sum0 = TensorOp::Reduce {
            op: ReduceOp::Sum,
            axis: ReduceAxis::Axis0,
        };
        assert_eq!(
            output_shape(sum0, &[Shape::new(3, 4)]).unwrap(),
            Shape::new(1, 4)
        );
    }
}
