//! The `shoal_v1` tensor calls: `tensor_create`, `tensor_op`, `tensor_shape`, `tensor_read`
//! and `tensor_free` (their encoding is documented once, on `shoal::abi::TensorOpCode`).
//!
//! Same rules as the other host functions: the clock is checked first, every `(ptr, len)` is
//! bounds-checked, and every failure is a guest-visible [`ErrorCode`], with the reason noted
//! in the task's log. The node's compute backend is created on the first tensor call of any
//! task (wgpu start-up is slow and most tasks never use tensors) and shared by all tasks;
//! each task gets its own [`TensorTable`], dropped with the task's `Store`.

use std::sync::{Arc, OnceLock};

// Tensors cross the ABI as little-endian f32 bytes, copied as they lie in host memory.
#[cfg(not(target_endian = "little"))]
compile_error!("the tensor ABI copies f32 values byte for byte: the host must be little-endian");

use shoal::abi::{ErrorCode, IMPORT_MODULE, TensorOp};
use wasmtime::{Caller, Linker};

use super::{
    TaskState,
    host_fns::{check_clock, encode, guest_range, len_result, with_memory},
    logs::LogSink,
};
use crate::compute::{
    Backend, ComputeError, DeterministicCpuBackend, DeviceChoice, OpBudget, Shape, TensorTable,
    select_backend,
};

type Call<'a> = Caller<'a, TaskState>;
type GuestResult = Result<i32, ErrorCode>;

/// Which backend a [`LazyBackend`] makes.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// The node's `--device`.
    Device {
        choice: DeviceChoice,
        allow_software: bool,
    },
    /// [`DeterministicCpuBackend`], for tasks that ask for bit-identical results.
    Deterministic,
}

/// A node-wide compute backend, made on first use and shared by every task that uses it.
pub(crate) struct LazyBackend {
    source: Source,
    /// The backend, or why it could not be made (kept, so a broken device is not retried by
    /// every call of every task).
    cell: OnceLock<Result<Arc<dyn Backend>, String>>,
}

impl LazyBackend {
    /// The backend for `--device choice`.
    pub(crate) fn new(choice: DeviceChoice, allow_software: bool) -> Self {
        Self {
            source: Source::Device {
                choice,
                allow_software,
            },
            cell: OnceLock::new(),
        }
    }

    /// The deterministic cpu backend, on every core with its fast kernels (which give the same
    /// bits as the plain ones, on any thread count).
    pub(crate) fn deterministic() -> Self {
        Self {
            source: Source::Deterministic,
            cell: OnceLock::new(),
        }
    }

    /// The backend, making it on the first call; concurrent first calls wait for one start-up.
    fn get(&self) -> Result<&Arc<dyn Backend>, &str> {
        self.cell
            .get_or_init(|| match self.source {
                Source::Device {
                    choice,
                    allow_software,
                } => select_backend(choice, allow_software).map_err(|e| {
                    tracing::warn!(%e, ?choice, "no compute backend; tensor calls will fail");
                    format!("no compute backend for --device {choice:?}: {e}")
                }),
                Source::Deterministic => {
                    Ok(Arc::new(DeterministicCpuBackend::new()) as Arc<dyn Backend>)
                }
            })
            .as_ref()
            .map_err(String::as_str)
    }
}

/// The task's table (made on its first tensor call) and its log, borrowed together.
fn table(state: &mut TaskState) -> Result<(&mut TensorTable, &LogSink), ErrorCode> {
    if state.tensors.is_none() {
        let backend = match state.compute.get() {
            Ok(backend) => backend.clone(),
            Err(why) => {
                state
                    .logs
                    .append(&[format!("[host] tensors unavailable: {why}\n").as_bytes()]);
                return Err(ErrorCode::Unavailable);
            }
        };
        state.tensors = Some(TensorTable::new(backend, state.limits.tensor_bytes));
    }
    let TaskState { tensors, logs, .. } = state;
    Ok((tensors.as_mut().ok_or(ErrorCode::Unavailable)?, logs))
}

/// Logs a compute error under the call's name and turns it into its code.
fn fail(logs: &LogSink, what: &str, err: &ComputeError) -> ErrorCode {
    logs.append(&[format!("[host] {what}: {err}\n").as_bytes()]);
    err.code()
}

/// A handle as the table sees it; a negative `i32` becomes a value no table ever issues.
fn handle(h: i32) -> u32 {
    h as u32
}

fn tensor_create(
    state: &mut TaskState,
    data: &[u8],
    dims: (i32, i32),
    ptr: i32,
    len: i32,
) -> GuestResult {
    let (Ok(rows), Ok(cols)) = (u32::try_from(dims.0), u32::try_from(dims.1)) else {
        state.logs.append(&[format!(
            "[host] tensor_create: negative dimension {}x{}\n",
            dims.0, dims.1
        )
        .as_bytes()]);
        return Err(ErrorCode::InvalidArgument);
    };
    let shape = Shape::new(rows, cols);
    let bytes = shape
        .byte_size()
        .map_err(|e| fail(&state.logs, "tensor_create", &e))?;
    if u64::from(len as u32) != bytes {
        state.logs.append(&[format!(
            "[host] tensor_create: {} bytes do not fill a {shape} f32 tensor ({bytes} bytes)\n",
            len as u32
        )
        .as_bytes()]);
        return Err(ErrorCode::ShapeMismatch);
    }
    let range = guest_range(ptr, len, data.len())?;
    let (table, logs) = table(state)?;
    // Refuse before converting, so an over-quota call costs the host nothing.
    if table.used_bytes().saturating_add(bytes) > table.quota_bytes() {
        let err = ComputeError::QuotaExceeded {
            requested: bytes,
            used: table.used_bytes(),
            quota: table.quota_bytes(),
        };
        return Err(fail(logs, "tensor_create", &err));
    }
    // Guest memory has no alignment promise: copy the bytes into an aligned buffer.
    let mut values = vec![0.0f32; range.len() / 4];
    bytemuck::cast_slice_mut::<f32, u8>(&mut values).copy_from_slice(&data[range]);
    match table.create(values, shape) {
        Ok(h) => len_result(h as usize),
        Err(e) => Err(fail(logs, "tensor_create", &e)),
    }
}

fn tensor_op(
    state: &mut TaskState,
    code: i32,
    param: i32,
    alpha: f32,
    a: i32,
    b: i32,
) -> GuestResult {
    let Some(op) = TensorOp::decode(code, param, alpha) else {
        state.logs.append(&[format!(
            "[host] tensor_op: unknown op code {code} with param {param:#x}\n"
        )
        .as_bytes()]);
        return Err(ErrorCode::InvalidArgument);
    };
    let inputs = [handle(a), handle(b)];
    // The op may use what the task has left; its worker threads' CPU is the task's too.
    let budget = OpBudget::new(state.clock.deadline, state.clock.cpu_left());
    let (table, _) = table(state)?;
    let result = table.run_within(op, &inputs[..op.arity()], &budget);
    state.clock.charge(budget.cpu());
    match result {
        Ok(h) => len_result(h as usize),
        // The caller's clock check ends the task for the limit that stopped the op.
        Err(e @ ComputeError::Cancelled { .. }) => Err(e.code()),
        Err(e) => Err(fail(&state.logs, &format!("tensor_op {}", op.name()), &e)),
    }
}

fn tensor_shape(state: &mut TaskState, data: &mut [u8], h: i32, out_ptr: i32) -> GuestResult {
    let range = guest_range(out_ptr, 8, data.len())?;
    let (table, logs) = table(state)?;
    let shape = table
        .shape(handle(h))
        .map_err(|e| fail(logs, "tensor_shape", &e))?;
    data[range.start..range.start + 4].copy_from_slice(&shape.rows.to_le_bytes());
    data[range.start + 4..range.end].copy_from_slice(&shape.cols.to_le_bytes());
    Ok(0)
}

fn tensor_read(state: &mut TaskState, data: &mut [u8], h: i32, ptr: i32, len: i32) -> GuestResult {
    let range = guest_range(ptr, len, data.len())?;
    let (table, logs) = table(state)?;
    let shape = table
        .shape(handle(h))
        .map_err(|e| fail(logs, "tensor_read", &e))?;
    let needed = shape
        .byte_size()
        .map_err(|e| fail(logs, "tensor_read", &e))?;
    if (range.len() as u64) < needed {
        return Err(ErrorCode::BufferTooSmall);
    }
    let values = table
        .read(handle(h))
        .map_err(|e| fail(logs, "tensor_read", &e))?;
    let bytes: &[u8] = bytemuck::cast_slice(&values);
    data[range][..bytes.len()].copy_from_slice(bytes);
    len_result(bytes.len())
}

fn tensor_free(state: &mut TaskState, h: i32) -> GuestResult {
    let (table, logs) = table(state)?;
    table
        .free(handle(h))
        .map_err(|e| fail(logs, "tensor_free", &e))?;
    Ok(0)
}

/// Registers the tensor imports.
pub(crate) fn add_to_linker(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    let m = IMPORT_MODULE;

    linker.func_wrap(
        m,
        "tensor_create",
        |mut c: Call<'_>, rows: i32, cols: i32, ptr: i32, len: i32| {
            check_clock(&c)?;
            let result = with_memory(&mut c, |data, state| {
                tensor_create(state, data, (rows, cols), ptr, len)
            });
            // Uploading a large tensor can take a while on a slow device.
            check_clock(&c)?;
            Ok(encode(result))
        },
    )?;

    linker.func_wrap(
        m,
        "tensor_op",
        |mut c: Call<'_>, code: i32, param: i32, alpha: f32, a: i32, b: i32| {
            check_clock(&c)?;
            let result = tensor_op(c.data_mut(), code, param, alpha, a, b);
            // Epochs do not tick in host code: an op that ran out the task's time or CPU (it
            // stops itself, within one block) ends the task here, for that limit.
            check_clock(&c)?;
            Ok(encode(result))
        },
    )?;

    linker.func_wrap(
        m,
        "tensor_shape",
        |mut c: Call<'_>, h: i32, out_ptr: i32| {
            check_clock(&c)?;
            Ok(encode(with_memory(&mut c, |data, state| {
                tensor_shape(state, data, h, out_ptr)
            })))
        },
    )?;

    linker.func_wrap(
        m,
        "tensor_read",
        |mut c: Call<'_>, h: i32, ptr: i32, len: i32| {
            check_clock(&c)?;
            let result = with_memory(&mut c, |data, state| tensor_read(state, data, h, ptr, len));
            check_clock(&c)?;
            Ok(encode(result))
        },
    )?;

    linker.func_wrap(m, "tensor_free", |mut c: Call<'_>, h: i32| {
        check_clock(&c)?;
        Ok(encode(tensor_free(c.data_mut(), h)))
    })?;

    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::{
        compute::{BinaryOp, MAX_TENSOR_ALLOCATIONS},
        runtime::{
            limits::{Limits, TaskClock, TaskLimiter},
            wasi,
        },
        store::BlockStore,
    };

    /// A task's state as the runtime makes it, with tensors on the cpu backend.
    fn task_state(store_dir: &std::path::Path) -> TaskState {
        let limits = Limits::default();
        let logs = LogSink::new(limits.log_bytes);
        let clock = TaskClock::start(&limits);
        TaskState {
            wasi: wasi::task_ctx(&logs, clock.deadline, clock.timeout, None),
            limiter: TaskLimiter::new(&limits),
            clock,
            memory: None,
            store: Arc::new(BlockStore::open(store_dir).unwrap()),
            inputs: Vec::new(),
            chunks: Default::default(),
            args: Vec::new(),
            outputs: Vec::new(),
            output_bytes: 0,
            limits: limits.clone(),
            logs,
            error_message: None,
            compute: Arc::new(LazyBackend::new(DeviceChoice::Cpu, false)),
            tensors: None,
            subtasks: crate::runtime::subtasks::Subtasks::new(
                &crate::runtime::TaskSpec {
                    module: crate::store::Cid([0; 32]),
                    task: None,
                    inputs: Vec::new(),
                    args: Vec::new(),
                    limits: limits.clone(),
                    depth: 0,
                    deterministic: false,
                    tenant: None,
                },
                &limits,
                None,
            ),
            progress: None,
        }
    }

    /// A 1x1 tensor holding `value`, made as the guest makes one.
    fn create(state: &mut TaskState, value: f32) -> GuestResult {
        tensor_create(state, &value.to_le_bytes(), (1, 1), 0, 4)
    }

    /// The value of the 1x1 tensor `h`, read as the guest reads one.
    fn read(state: &mut TaskState, h: i32) -> f32 {
        let mut out = [0u8; 4];
        assert_eq!(tensor_read(state, &mut out, h, 0, 4), Ok(4), "read {h:#x}");
        f32::from_le_bytes(out)
    }

    /// `h` is a positive i32 that names no other live tensor; it becomes live with `value`.
    fn issued(live: &mut HashMap<i32, f32>, h: GuestResult, value: f32) -> i32 {
        let h = h.unwrap_or_else(|e| panic!("tensor {value} refused: {e}"));
        assert!(
            h > 0,
            "handle {h:#x} for tensor {value} is not a positive i32"
        );
        if let Some(old) = live.insert(h, value) {
            panic!("handle {h:#x} issued for {value} while still naming {old}");
        }
        h
    }

    /// Every handle the tensor calls give a guest is a positive i32 that names its own tensor
    /// and no other live one: over creates, ops and frees, in 300 tables (so the table salts
    /// wrap), and up to the last slot one table has. Negative handles are refused.
    #[test]
    fn negative_handles_are_never_issued() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = task_state(dir.path());

        // A fresh table per round, as for a new task: every salt, then around again.
        for round in 0..300u32 {
            state.tensors = None;
            let mut live = HashMap::new();
            let base = round as f32 * 10.0;
            let a = issued(&mut live, create(&mut state, base), base);
            let b = issued(&mut live, create(&mut state, base + 1.0), base + 1.0);
            let (code, param, alpha) = TensorOp::Binary(BinaryOp::Add).encode();
            let sum = tensor_op(&mut state, code, param, alpha, a, b);
            let sum = issued(&mut live, sum, 2.0 * base + 1.0);
            assert_eq!(tensor_free(&mut state, a), Ok(0));
            live.remove(&a);
            issued(&mut live, create(&mut state, base + 2.0), base + 2.0);
            for (&h, &value) in &live {
                assert_eq!(read(&mut state, h), value, "round {round}, handle {h:#x}");
            }
            assert_eq!(tensor_free(&mut state, a), Err(ErrorCode::BadHandle));
            assert_eq!(read(&mut state, sum), 2.0 * base + 1.0);
        }

        // One table until it has issued every slot, freeing as it goes (slots are never
        // reused, so the live cap is never the limit).
        state.tensors = None;
        let mut live = HashMap::new();
        let mut order = std::collections::VecDeque::new();
        let mut made = 0u32;
        let refusal = loop {
            let value = made as f32; // exact: made < 2^24
            let h = match create(&mut state, value) {
                Ok(h) => h,
                Err(e) => break e,
            };
            order.push_back(issued(&mut live, Ok(h), value));
            made += 1;
            if order.len() > 64 {
                let old = order.pop_front().unwrap();
                let value = live.remove(&old).unwrap();
                if made.is_multiple_of(4096) {
                    assert_eq!(read(&mut state, old), value, "handle {old:#x}");
                }
                assert_eq!(tensor_free(&mut state, old), Ok(0));
            }
        };
        assert_eq!(refusal, ErrorCode::TooLarge);
        assert_eq!(made, MAX_TENSOR_ALLOCATIONS);
        for (&h, &value) in &live {
            assert_eq!(read(&mut state, h), value, "handle {h:#x}");
        }

        // A negative handle from the guest names nothing.
        let mut out = [0u8; 8];
        for h in [-1, i32::MIN, -(live.keys().next().copied().unwrap())] {
            assert_eq!(tensor_free(&mut state, h), Err(ErrorCode::BadHandle));
            assert_eq!(
                tensor_shape(&mut state, &mut out, h, 0),
                Err(ErrorCode::BadHandle)
            );
        }
    }
}
