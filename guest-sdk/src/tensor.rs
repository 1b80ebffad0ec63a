//! [`Tensor`]: a 2-D f32 tensor held by the host, with its ops as methods.

use std::fmt;

pub use crate::abi::ReduceAxis;
use crate::{
    Error,
    abi::{BinaryOp, ErrorCode, ReduceOp, TensorOp, UnaryOp, XentReduction},
    sys,
};

/// A `rows x cols` f32 tensor, row-major, that lives on the host's compute device (a GPU or
/// the host's CPU kernels) and stays there between ops. Each op makes a new tensor; reading
/// values back into the task is an explicit [`Tensor::to_vec`]. Dropping a `Tensor` frees it;
/// every tensor also counts against the task's device-memory quota until then.
///
/// Every method returns `Err` with the host's [`ErrorCode`] (see [`Error::code`]) when the
/// host refuses: shapes that do not fit (`ShapeMismatch`), the quota (`QuotaExceeded`), sizes
/// that overflow (`TooLarge`), or no device (`Unavailable`).
///
/// Natively (in unit tests), the same ops run in a plain-Rust reference implementation with
/// the host's shape rules and error codes.
///
/// ```
/// use shoal::{Error, Tensor, tensor::ReduceAxis};
///
/// # fn main() -> Result<(), Error> {
/// let x = Tensor::from_slice(2, 3, &[1.0, -2.0, 3.0, -4.0, 5.0, -6.0])?;
/// let w = Tensor::from_slice(3, 1, &[1.0, 1.0, 1.0])?;
/// let y = x.relu()?.matmul(&w)?;
/// assert_eq!(y.shape(), (2, 1));
/// assert_eq!(y.to_vec()?, vec![4.0, 5.0]);
/// assert_eq!(x.sum(ReduceAxis::Axis0)?.to_vec()?, vec![-3.0, 3.0, -3.0]);
/// // Shapes that do not fit are a typed error, not a panic.
/// let err = x.matmul(&x).unwrap_err();
/// assert_eq!(err.code(), Some(shoal::abi::ErrorCode::ShapeMismatch));
/// # Ok(())
/// # }
/// ```
pub struct Tensor {
    handle: u32,
    rows: usize,
    cols: usize,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor({}x{}, handle {:#x})",
            self.rows, self.cols, self.handle
        )
    }
}

impl Drop for Tensor {
    fn drop(&mut self) {
        // Freeing can only fail for a handle the host no longer knows: nothing to do then.
        let _ = sys::tensor_free(self.handle);
    }
}

fn host_err(what: &str) -> impl FnOnce(ErrorCode) -> Error + '_ {
    move |code| Error::host(format_args!("tensor {what}"), code)
}

impl Tensor {
    /// A `rows x cols` tensor holding `data` (row-major).
    ///
    /// # Errors
    /// `ShapeMismatch` if `data.len() != rows * cols`, `InvalidArgument` for a zero
    /// dimension, `TooLarge` and `QuotaExceeded` for sizes the task may not have.
    pub fn from_slice(rows: usize, cols: usize, data: &[f32]) -> Result<Tensor, Error> {
        let handle = sys::tensor_create(rows, cols, data).map_err(host_err("create"))?;
        Ok(Tensor { handle, rows, cols })
    }

    /// A `rows x cols` tensor of zeros.
    ///
    /// # Errors
    /// As [`Tensor::from_slice`].
    pub fn zeros(rows: usize, cols: usize) -> Result<Tensor, Error> {
        let len = rows
            .checked_mul(cols)
            .ok_or_else(|| Error::host("tensor create", ErrorCode::TooLarge))?;
        Self::from_slice(rows, cols, &vec![0.0; len])
    }

    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The raw handle, for diagnostics: it is only meaningful inside this task.
    pub fn handle(&self) -> u32 {
        self.handle
    }

    /// Copies the values back into the task, row-major.
    ///
    /// # Errors
    /// `Unavailable` if the device fails.
    pub fn to_vec(&self) -> Result<Vec<f32>, Error> {
        let len = self.rows * self.cols;
        let mut out = vec![0.0; len];
        let n = sys::tensor_read(self.handle, &mut out).map_err(host_err("read"))?;
        out.truncate(n);
        Ok(out)
    }

    fn op(&self, op: TensorOp, other: Option<&Tensor>) -> Result<Tensor, Error> {
        let what = op.name();
        let b = other.map_or(self.handle, |t| t.handle);
        let handle = sys::tensor_op(op, self.handle, b).map_err(host_err(what))?;
        // The host knows the shape; asking keeps one source of truth for shape rules.
        match sys::tensor_shape(handle) {
            Ok((rows, cols)) => Ok(Tensor { handle, rows, cols }),
            Err(code) => {
                let _ = sys::tensor_free(handle);
                Err(host_err(what)(code))
            }
        }
    }

    fn reduce(&self, op: ReduceOp, axis: ReduceAxis) -> Result<Tensor, Error> {
        self.op(TensorOp::Reduce { op, axis }, None)
    }

    /// `self @ other`.
    ///
    /// # Errors
    /// `ShapeMismatch` unless `self` is `m x k` and `other` is `k x n`.
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor, Error> {
        self.matmul_t(other, false, false)
    }

    /// `op(self) @ op(other)`, where `op` transposes its operand when the flag is set.
    ///
    /// # Errors
    /// `ShapeMismatch` when the inner dimensions differ.
    pub fn matmul_t(&self, other: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor, Error> {
        self.op(TensorOp::Matmul { trans_a, trans_b }, Some(other))
    }

    /// `self + other` element-wise; `other` may be a `1 x cols` row, added to every row.
    ///
    /// # Errors
    /// `ShapeMismatch` for other shapes.
    pub fn add(&self, other: &Tensor) -> Result<Tensor, Error> {
        self.op(TensorOp::Binary(BinaryOp::Add), Some(other))
    }

    /// `self - other` element-wise (broadcast as [`Tensor::add`]).
    ///
    /// # Errors
    /// `ShapeMismatch` for other shapes.
    pub fn sub(&self, other: &Tensor) -> Result<Tensor, Error> {
        self.op(TensorOp::Binary(BinaryOp::Sub), Some(other))
    }

    /// `self * other` element-wise (broadcast as [`Tensor::add`]).
    ///
    /// # Errors
    /// `ShapeMismatch` for other shapes.
    pub fn mul(&self, other: &Tensor) -> Result<Tensor, Error> {
        self.op(TensorOp::Binary(BinaryOp::Mul), Some(other))
    }

    /// `alpha * self`.
    pub fn scale(&self, alpha: f32) -> Result<Tensor, Error> {
        self.op(TensorOp::Scale { alpha }, None)
    }

    /// `alpha * self + y`.
    ///
    /// # Errors
    /// `ShapeMismatch` unless both have one shape.
    pub fn axpy(&self, alpha: f32, y: &Tensor) -> Result<Tensor, Error> {
        self.op(TensorOp::Axpy { alpha }, Some(y))
    }

    /// `max(self, 0)`.
    pub fn relu(&self) -> Result<Tensor, Error> {
        self.op(TensorOp::Activation(UnaryOp::Relu), None)
    }

    /// `dy` where `self > 0`, else 0 (`self` is the pre-activation input).
    ///
    /// # Errors
    /// `ShapeMismatch` unless both have one shape.
    pub fn relu_grad(&self, dy: &Tensor) -> Result<Tensor, Error> {
        self.op(TensorOp::ActivationGrad(UnaryOp::Relu), Some(dy))
    }

    /// `1 / (1 + exp(-self))`.
    pub fn sigmoid(&self) -> Result<Tensor, Error> {
        self.op(TensorOp::Activation(UnaryOp::Sigmoid), None)
    }

    /// `dy * s * (1 - s)` with `s = sigmoid(self)`.
    ///
    /// # Errors
    /// `ShapeMismatch` unless both have one shape.
    pub fn sigmoid_grad(&self, dy: &Tensor) -> Result<Tensor, Error> {
        self.op(TensorOp::ActivationGrad(UnaryOp::Sigmoid), Some(dy))
    }

    /// `tanh(self)`.
    pub fn tanh(&self) -> Result<Tensor, Error> {
        self.op(TensorOp::Activation(UnaryOp::Tanh), None)
    }

    /// `dy * (1 - tanh(self)^2)`.
    ///
    /// # Errors
    /// `ShapeMismatch` unless both have one shape.
    pub fn tanh_grad(&self, dy: &Tensor) -> Result<Tensor, Error> {
        self.op(TensorOp::ActivationGrad(UnaryOp::Tanh), Some(dy))
    }

    /// Sum along `axis`: `Axis0` gives `1 x cols`, `Axis1` gives `rows x 1`.
    pub fn sum(&self, axis: ReduceAxis) -> Result<Tensor, Error> {
        self.reduce(ReduceOp::Sum, axis)
    }

    /// Mean along `axis` (shapes as [`Tensor::sum`]).
    pub fn mean(&self, axis: ReduceAxis) -> Result<Tensor, Error> {
        self.reduce(ReduceOp::Mean, axis)
    }

    /// The mean softmax cross-entropy loss (`1 x 1`) of logits `self` (`r x c`) against
    /// `labels` (`r x 1`, class indices as f32). A label outside `0..c` makes the loss NaN.
    ///
    /// # Errors
    /// `ShapeMismatch` unless `labels` is `r x 1`.
    pub fn softmax_xent(&self, labels: &Tensor) -> Result<Tensor, Error> {
        self.op(TensorOp::SoftmaxXent(XentReduction::Mean), Some(labels))
    }

    /// The per-row softmax cross-entropy loss (`r x 1`); see [`Tensor::softmax_xent`].
    ///
    /// # Errors
    /// `ShapeMismatch` unless `labels` is `r x 1`.
    pub fn softmax_xent_per_row(&self, labels: &Tensor) -> Result<Tensor, Error> {
        self.op(TensorOp::SoftmaxXent(XentReduction::PerRow), Some(labels))
    }

    /// The gradient of [`Tensor::softmax_xent`] with respect to the logits:
    /// `(softmax(self) - onehot(labels)) / r`.
    ///
    /// # Errors
    /// `ShapeMismatch` unless `labels` is `r x 1`.
    pub fn softmax_xent_grad(&self, labels: &Tensor) -> Result<Tensor, Error> {
        self.op(TensorOp::SoftmaxXentGrad, Some(labels))
    }

    /// `self^T`.
    pub fn transpose(&self) -> Result<Tensor, Error> {
        self.op(TensorOp::Transpose, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= tol * w.abs().max(1.0),
                "{got:?} vs {want:?}"
            );
        }
    }

    fn t(rows: usize, cols: usize, data: &[f32]) -> Tensor {
        Tensor::from_slice(rows, cols, data).expect("create")
    }

    #[test]
    fn matmul_with_transposes() {
        let a = t(2, 3, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b = t(3, 2, &[7.0, 8.0, 9.0, 10.0, 11.0, 12.0]);
        let c = a.matmul(&b).unwrap();
        assert_eq!(c.shape(), (2, 2));
        assert_eq!(c.to_vec().unwrap(), vec![58.0, 64.0, 139.0, 154.0]);
        let at = a.transpose().unwrap();
        let bt = b.transpose().unwrap();
        assert_eq!(at.shape(), (3, 2));
        assert_eq!(
            at.matmul_t(&bt, true, true).unwrap().to_vec().unwrap(),
            c.to_vec().unwrap()
        );
        assert_eq!(
            a.matmul_t(&a, false, true).unwrap().to_vec().unwrap(),
            vec![14.0, 32.0, 32.0, 77.0]
        );
        assert_eq!(a.matmul_t(&a, true, false).unwrap().shape(), (3, 3));
    }

    #[test]
    fn elementwise_and_broadcast() {
        let a = t(2, 2, &[1.0, 2.0, 3.0, 4.0]);
        let row = t(1, 2, &[10.0, 20.0]);
        assert_eq!(
            a.add(&row).unwrap().to_vec().unwrap(),
            vec![11.0, 22.0, 13.0, 24.0]
        );
        assert_eq!(a.sub(&a).unwrap().to_vec().unwrap(), vec![0.0; 4]);
        assert_eq!(
            a.mul(&a).unwrap().to_vec().unwrap(),
            vec![1.0, 4.0, 9.0, 16.0]
        );
        assert_eq!(
            a.scale(0.5).unwrap().to_vec().unwrap(),
            vec![0.5, 1.0, 1.5, 2.0]
        );
        assert_eq!(
            a.axpy(2.0, &a).unwrap().to_vec().unwrap(),
            vec![3.0, 6.0, 9.0, 12.0]
        );
        let col = t(2, 1, &[1.0, 2.0]);
        assert_eq!(
            a.add(&col).unwrap_err().code(),
            Some(ErrorCode::ShapeMismatch)
        );
        assert_eq!(
            a.axpy(1.0, &row).unwrap_err().code(),
            Some(ErrorCode::ShapeMismatch)
        );
    }

    #[test]
    fn activations_and_grads() {
        let x = t(1, 3, &[-1.0, 0.0, 2.0]);
        let dy = t(1, 3, &[1.0, 1.0, 3.0]);
        assert_eq!(x.relu().unwrap().to_vec().unwrap(), vec![0.0, 0.0, 2.0]);
        assert_eq!(
            x.relu_grad(&dy).unwrap().to_vec().unwrap(),
            vec![0.0, 0.0, 3.0]
        );
        let s = |v: f32| 1.0 / (1.0 + (-v).exp());
        close(
            &x.sigmoid().unwrap().to_vec().unwrap(),
            &[s(-1.0), 0.5, s(2.0)],
            1e-6,
        );
        close(
            &x.sigmoid_grad(&dy).unwrap().to_vec().unwrap(),
            &[
                s(-1.0) * (1.0 - s(-1.0)),
                0.25,
                3.0 * s(2.0) * (1.0 - s(2.0)),
            ],
            1e-6,
        );
        close(
            &x.tanh().unwrap().to_vec().unwrap(),
            &[(-1f32).tanh(), 0.0, 2f32.tanh()],
            1e-6,
        );
        close(
            &x.tanh_grad(&dy).unwrap().to_vec().unwrap(),
            &[
                1.0 - (-1f32).tanh().powi(2),
                1.0,
                3.0 * (1.0 - 2f32.tanh().powi(2)),
            ],
            1e-6,
        );
    }

    #[test]
    fn reductions() {
        let a = t(2, 3, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let s0 = a.sum(ReduceAxis::Axis0).unwrap();
        assert_eq!(
            (s0.shape(), s0.to_vec().unwrap()),
            ((1, 3), vec![5.0, 7.0, 9.0])
        );
        let m1 = a.mean(ReduceAxis::Axis1).unwrap();
        assert_eq!((m1.shape(), m1.to_vec().unwrap()), ((2, 1), vec![2.0, 5.0]));
    }

    #[test]
    fn softmax_cross_entropy() {
        let logits = t(2, 2, &[0.0, 0.0, 0.0, 1.0]);
        let labels = t(2, 1, &[0.0, 1.0]);
        let e = std::f32::consts::E;
        let row1 = (1.0 + e).ln() - 1.0;
        close(
            &logits
                .softmax_xent_per_row(&labels)
                .unwrap()
                .to_vec()
                .unwrap(),
            &[2f32.ln(), row1],
            1e-6,
        );
        close(
            &logits.softmax_xent(&labels).unwrap().to_vec().unwrap(),
            &[(2f32.ln() + row1) / 2.0],
            1e-6,
        );
        let p = e / (1.0 + e);
        close(
            &logits.softmax_xent_grad(&labels).unwrap().to_vec().unwrap(),
            &[-0.25, 0.25, (1.0 - p) / 2.0, (p - 1.0) / 2.0],
            1e-6,
        );
        let bad = t(2, 1, &[0.0, 5.0]);
        assert!(logits.softmax_xent_per_row(&bad).unwrap().to_vec().unwrap()[1].is_nan());
        assert_eq!(
            logits.softmax_xent(&logits).unwrap_err().code(),
            Some(ErrorCode::ShapeMismatch)
        );
    }

    #[test]
    fn errors_carry_host_codes() {
        let err = Tensor::from_slice(2, 2, &[1.0; 3]).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::ShapeMismatch));
        assert!(err.to_string().starts_with("tensor create: "), "{err}");
        assert_eq!(
            Tensor::from_slice(0, 2, &[]).unwrap_err().code(),
            Some(ErrorCode::InvalidArgument)
        );
        assert_eq!(
            sys::tensor_create(1 << 33, 1, &[]),
            Err(ErrorCode::TooLarge)
        );
        assert_eq!(Tensor::zeros(2, 2).unwrap().to_vec().unwrap(), vec![0.0; 4]);
        let a = t(3, 4, &[0.0; 12]);
        let b = t(5, 6, &[0.0; 30]);
        let err = a.matmul(&b).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::ShapeMismatch));
        assert!(err.to_string().contains("tensor matmul"), "{err}");
        assert_eq!(a.shape(), (3, 4));
    }

    #[test]
    fn freed_handles_are_dead() {
        let a = t(1, 1, &[1.0]);
        let h = a.handle();
        drop(a);
        assert_eq!(sys::tensor_shape(h), Err(ErrorCode::BadHandle));
        assert_eq!(sys::tensor_free(h), Err(ErrorCode::BadHandle));
        assert_eq!(
            sys::tensor_op(TensorOp::Transpose, h, h),
            Err(ErrorCode::BadHandle)
        );
        let mut short = [0.0; 1];
        let b = t(1, 2, &[1.0, 2.0]);
        assert_eq!(
            sys::tensor_read(b.handle(), &mut short),
            Err(ErrorCode::BufferTooSmall)
        );
    }
}
