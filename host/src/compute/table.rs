//! The per-task tensor table: `u32` handles, a device-memory quota, and every op by handle.
//!
//! A handle is `salt << SLOT_BITS | slot`, always below 2^31 so it reaches the guest as a
//! positive `i32`. The salt is per table, so a handle from another task's table is reported
//! as foreign rather than silently naming one of this task's tensors. Slots are never reused:
//! a handle used after `free` is always a bad handle. Every tensor is freed with the table.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

use super::{
    Backend, BinaryOp, ComputeError, OpBudget, ReduceAxis, ReduceOp, Shape, Tensor, TensorOp,
    UnaryOp, XentReduction, output_shape,
};

/// Low bits of a handle: the slot, unique within a table.
const SLOT_BITS: u32 = 23;
/// Salts live in bits 23..31, so handles stay below 2^31.
const SALT_BITS: u32 = 8;
/// How many tensors one table may create in its lifetime (slots are never reused).
pub const MAX_TENSOR_ALLOCATIONS: u32 = (1 << SLOT_BITS) - 1;
/// How many tensors one table may hold at once, whatever their size.
pub const MAX_LIVE_TENSORS: usize = 1 << 16;

/// Hands out table salts in turn, so that 255 tables made one after another all differ.
static NEXT_SALT: AtomicU32 = AtomicU32::new(0);

/// One task's tensors. Not shared between tasks; dropping it frees every tensor it holds.
pub struct TensorTable {
    backend: Arc<dyn Backend>,
    salt: u32,
    next_slot: u32,
    /// Live tensors by slot, with the bytes each is charged.
    tensors: HashMap<u32, (Tensor, u64)>,
    used_bytes: u64,
    quota_bytes: u64,
}

impl fmt::Debug for TensorTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TensorTable")
            .field("backend", &self.backend.name())
            .field("salt", &self.salt)
            .field("live", &self.tensors.len())
            .field("used_bytes", &self.used_bytes)
            .field("quota_bytes", &self.quota_bytes)
            .finish()
    }
}

impl TensorTable {
    /// An empty table on `backend` that may hold at most `quota_bytes` of tensor data.
    pub fn new(backend: Arc<dyn Backend>, quota_bytes: u64) -> Self {
        // Salt 0 is skipped so that no handle is ever 0.
        let salt = NEXT_SALT.fetch_add(1, Ordering::Relaxed) % ((1 << SALT_BITS) - 1) + 1;
        Self {
            backend,
            salt,
            next_slot: 0,
            tensors: HashMap::new(),
            used_bytes: 0,
            quota_bytes,
        }
    }

    /// The backend the tensors live on.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Bytes of tensor data held now.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    /// The table's quota in bytes.
    pub fn quota_bytes(&self) -> u64 {
        self.quota_bytes
    }

    /// Number of live tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the table holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    fn slot(&self, handle: u32) -> Result<u32, ComputeError> {
        if handle >> SLOT_BITS != self.salt {
            return Err(if handle >> SLOT_BITS == 0 || handle >= 1 << 31 {
                ComputeError::BadHandle { handle }
            } else {
                ComputeError::ForeignHandle { handle }
            });
        }
        Ok(handle & ((1 << SLOT_BITS) - 1))
    }

    fn get(&self, handle: u32) -> Result<&Tensor, ComputeError> {
        self.tensors
            .get(&self.slot(handle)?)
            .map(|(t, _)| t)
            .ok_or(ComputeError::BadHandle { handle })
    }

    /// Checks that a tensor of `shape` fits the quota and the handle space.
    fn reserve(&self, shape: Shape) -> Result<u64, ComputeError> {
        let bytes = shape.byte_size()?;
        if self.tensors.len() >= MAX_LIVE_TENSORS {
            return Err(ComputeError::TooManyTensors {
                limit: MAX_LIVE_TENSORS,
            });
        }
        if self.next_slot >= MAX_TENSOR_ALLOCATIONS {
            return Err(ComputeError::HandlesExhausted {
                limit: MAX_TENSOR_ALLOCATIONS,
            });
        }
        if self
            .used_bytes
            .checked_add(bytes)
            .is_none_or(|total| total > self.quota_bytes)
        {
            return Err(ComputeError::QuotaExceeded {
                requested: bytes,
                used: self.used_bytes,
                quota: self.quota_bytes,
            });
        }
        Ok(bytes)
    }

    fn insert(&mut self, tensor: Tensor, bytes: u64) -> u32 {
        let slot = self.next_slot;
        self.next_slot += 1;
        self.used_bytes += bytes;
        self.tensors.insert(slot, (tensor, bytes));
        self.salt << SLOT_BITS | slot
    }

    /// A new tensor of `shape` holding `data` (row-major).
    ///
    /// # Errors
    ///
    /// [`ComputeError::DataLength`] if `data` does not fill `shape`; quota, size and device
    /// errors.
    pub fn create(&mut self, data: impl Into<Vec<f32>>, shape: Shape) -> Result<u32, ComputeError> {
        let bytes = self.reserve(shape)?;
        let tensor = self.backend.upload(data.into(), shape)?;
        Ok(self.insert(tensor, bytes))
    }

    /// Runs `op` on the tensors `inputs`, with no time or CPU limit, and returns the result's
    /// handle.
    ///
    /// # Errors
    ///
    /// As [`TensorTable::run_within`], but never [`ComputeError::Cancelled`].
    pub fn run(&mut self, op: TensorOp, inputs: &[u32]) -> Result<u32, ComputeError> {
        self.run_within(op, inputs, &OpBudget::unlimited())
    }

    /// Runs `op` on the tensors `inputs` within `budget` and returns the result's handle.
    ///
    /// # Errors
    ///
    /// Bad or foreign handles, shape errors from [`output_shape`], quota, size and device
    /// errors, [`ComputeError::Cancelled`] when `budget` runs out. Nothing is allocated when
    /// an error is returned.
    pub fn run_within(
        &mut self,
        op: TensorOp,
        inputs: &[u32],
        budget: &OpBudget,
    ) -> Result<u32, ComputeError> {
        let tensors = inputs
            .iter()
            .map(|&h| self.get(h))
            .collect::<Result<Vec<_>, _>>()?;
        let shapes: Vec<Shape> = tensors.iter().map(|t| t.shape()).collect();
        let bytes = self.reserve(output_shape(op, &shapes)?)?;
        let out = self.backend.execute(op, &tensors, budget)?;
        Ok(self.insert(out, bytes))
    }

    /// `op(A) @ op(B)`; see [`TensorOp::Matmul`].
    ///
    /// # Errors
    ///
    /// As [`TensorTable::run`]; e.g. "shapes 3x4 and 5x6 do not fit matmul".
    pub fn matmul(
        &mut self,
        a: u32,
        b: u32,
        trans_a: bool,
        trans_b: bool,
    ) -> Result<u32, ComputeError> {
        self.run(TensorOp::Matmul { trans_a, trans_b }, &[a, b])
    }

    /// `a + b` (`b` may be a `1 x cols` row, broadcast).
    ///
    /// # Errors
    ///
    /// As [`TensorTable::run`].
    pub fn add(&mut self, a: u32, b: u32) -> Result<u32, ComputeError> {
        self.run(TensorOp::Binary(BinaryOp::Add), &[a, b])
    }

    /// `a - b` (`b` may be a `1 x cols` row, broadcast).
    ///
    /// # Errors
    ///
    /// As [`TensorTable::run`].
    pub fn sub(&mut self, a: u32, b: u32) -> Result<u32, ComputeError> {
        self.run(TensorOp::Binary(BinaryOp::Sub), &[a, b])
    }

    /// `a * b` element-wise (`b` may be a `1 x cols` row, broadcast).
    ///
    /// # Errors
    ///
    /// As [`TensorTable::run`].
    pub fn mul(&mut self, a: u32, b: u32) -> Result<u32, ComputeError> {
        self.run(TensorOp::Binary(BinaryOp::Mul), &[a, b])
    }

    /// `alpha * x`.
    ///
    /// # Errors
    ///
    /// As [`TensorTable::run`].
    pub fn scale(&mut self, x: u32, alpha: f32) -> Result<u32, ComputeError> {
        self.run(TensorOp::Scale { alpha }, &[x])
    }

    /// `alpha * x + y`.
    ///
    /// # Errors
    ///
    /// As [`TensorTable::run`].
    pub fn axpy(&mut self, alpha: f32, x: u32, y: u32) -> Result<u32, ComputeError> {
        self.run(TensorOp::Axpy { alpha }, &[x, y])
    }

    /// `f(x)` for an activation `f`.
    ///
    /// # Errors
    ///
    /// As [`TensorTable::run`].
    pub fn activation(&mut self, op: UnaryOp, x: u32) -> Result<u32, ComputeError> {
        self.run(TensorOp::Activation(op), &[x])
    }

    /// `dy * f'(x)` for an activation `f`, given its input `x`.
    ///
    /// # Errors
    ///
    /// As [`TensorTable::run`].
    pub fn activation_grad(&mut self, op: UnaryOp, x: u32, dy: u32) -> Result<u32, ComputeError> {
        self.run(TensorOp::ActivationGrad(op), &[x, dy])
    }

    /// Sum or mean along `axis`; see [`ReduceAxis`].
    ///
    /// # Errors
    ///
    /// As [`TensorTable::run`].
    pub fn reduce(&mut self, op: ReduceOp, axis: ReduceAxis, x: u32) -> Result<u32, ComputeError> {
        self.run(TensorOp::Reduce { op, axis }, &[x])
    }

    /// Softmax cross-entropy loss of `logits` (`r x c`) against `labels` (`r x 1` class
    /// indices as f32): the mean (`1 x 1`) or per-row (`r x 1`) loss.
    ///
    /// # Errors
    ///
    /// As [`TensorTable::run`].
    pub fn softmax_xent(
        &mut self,
        logits: u32,
        labels: u32,
        reduction: XentReduction,
    ) -> Result<u32, ComputeError> {
        self.run(TensorOp::SoftmaxXent(reduction), &[logits, labels])
    }

    /// The gradient of the mean softmax cross-entropy loss with respect to the logits:
    /// `(softmax(logits) - onehot(labels)) / r`.
    ///
    /// # Errors
    ///
    /// As [`TensorTable::run`].
    pub fn softmax_xent_backward(&mut self, logits: u32, labels: u32) -> Result<u32, ComputeError> {
        self.run(TensorOp::SoftmaxXentGrad, &[logits, labels])
    }

    /// `x^T`.
    ///
    /// # Errors
    ///
    /// As [`TensorTable::run`].
    pub fn transpose(&mut self, x: u32) -> Result<u32, ComputeError> {
        self.run(TensorOp::Transpose, &[x])
    }

    /// The tensor's shape.
    ///
    /// # Errors
    ///
    /// [`ComputeError::BadHandle`] or [`ComputeError::ForeignHandle`].
    pub fn shape(&self, handle: u32) -> Result<Shape, ComputeError> {
        Ok(self.get(handle)?.shape())
    }

    /// Copies the tensor back from the device.
    ///
    /// # Errors
    ///
    /// Bad handles and device errors.
    pub fn read(&self, handle: u32) -> Result<Vec<f32>, ComputeError> {
        let tensor = self.get(handle)?;
        let mut out = vec![0.0; tensor.shape().elements()?];
        self.backend.read_into(tensor, &mut out)?;
        Ok(out)
    }

    /// Copies the tensor into the first `rows * cols` values of `out`.
    ///
    /// # Errors
    ///
    /// [`ComputeError::BufferTooSmall`] if `out` is too short; bad handles and device errors.
    pub fn read_into(&self, handle: u32, out: &mut [f32]) -> Result<(), ComputeError> {
        self.backend.read_into(self.get(handle)?, out)
    }

    /// Frees the tensor and returns its bytes to the quota. The handle is never valid again.
    ///
    /// # Errors
    ///
    /// [`ComputeError::BadHandle`] or [`ComputeError::ForeignHandle`].
    pub fn free(&mut self, handle: u32) -> Result<(), ComputeError> {
        let slot = self.slot(handle)?;
        let (_, bytes) = self
            .tensors
            .remove(&slot)
            .ok_or(ComputeError::BadHandle { handle })?;
        self.used_bytes -= bytes;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::CpuBackend;

    fn table(quota: u64) -> TensorTable {
        TensorTable::new(Arc::new(CpuBackend::new()), quota)
    }

    #[test]
    fn handles_are_positive_i32_and_salted() {
        let mut t = table(1 << 20);
        let mut other = table(1 << 20);
        let h = t.create([1.0], Shape::new(1, 1)).unwrap();
        let g = other.create([2.0], Shape::new(1, 1)).unwrap();
        for x in [h, g] {
            assert!(i32::try_from(x).is_ok_and(|v| v > 0), "{x:#x}");
        }
        assert_ne!(h, g);
        assert!(matches!(t.read(g), Err(ComputeError::ForeignHandle { .. })));
        assert!(matches!(
            t.read(0),
            Err(ComputeError::BadHandle { handle: 0 })
        ));
        assert!(matches!(
            t.read(u32::MAX),
            Err(ComputeError::BadHandle { .. })
        ));
    }

    #[test]
    fn quota_is_charged_and_refunded() {
        let mut t = table(64);
        let h = t.create([0.0; 16], Shape::new(4, 4)).unwrap();
        assert_eq!(t.used_bytes(), 64);
        let err = t.create([0.0], Shape::new(1, 1)).unwrap_err();
        assert!(matches!(
            err,
            ComputeError::QuotaExceeded {
                requested: 4,
                used: 64,
                quota: 64
            }
        ));
        // An op whose output does not fit is refused before anything runs.
        assert!(matches!(
            t.scale(h, 2.0),
            Err(ComputeError::QuotaExceeded { .. })
        ));
        t.free(h).unwrap();
        assert_eq!(t.used_bytes(), 0);
        assert!(matches!(t.free(h), Err(ComputeError::BadHandle { .. })));
        t.create([0.0; 16], Shape::new(4, 4)).unwrap();
    }
}
