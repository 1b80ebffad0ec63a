//! The wgpu backend: WGSL compute shaders on one device shared by the node.
//!
//! Pipelines are compiled once, when the backend is made. Tensors are storage buffers that
//! stay on the device between ops; only [`Backend::read_into`] copies one back (through a
//! staging buffer, `map_async` and `poll`). Every kernel uses one bind-group layout:
//! binding 0 a 32-byte uniform of parameters, 1 and 2 the read-only inputs (unary kernels
//! bind their input twice), 3 the output.

use std::{
    collections::VecDeque,
    num::NonZeroU64,
    sync::{Mutex, MutexGuard, PoisonError, mpsc},
};

use wgpu::util::DeviceExt;

use super::{
    Backend, BackendKind, BinaryOp, ComputeError, LiveBytes, OpBudget, Overrun, ReduceAxis,
    ReduceOp, Shape, Storage, Tensor, TensorOp, UnaryOp, XentReduction, check_inputs,
};

/// Every shader file, by name, with its WGSL source (for validation in tests and tools).
pub const SHADERS: [(&str, &str); 7] = [
    ("matmul.wgsl", include_str!("../../../shaders/matmul.wgsl")),
    (
        "matmul_large.wgsl",
        include_str!("../../../shaders/matmul_large.wgsl"),
    ),
    (
        "elementwise.wgsl",
        include_str!("../../../shaders/elementwise.wgsl"),
    ),
    (
        "activation.wgsl",
        include_str!("../../../shaders/activation.wgsl"),
    ),
    ("reduce.wgsl", include_str!("../../../shaders/reduce.wgsl")),
    (
        "softmax_xent.wgsl",
        include_str!("../../../shaders/softmax_xent.wgsl"),
    ),
    (
        "transpose.wgsl",
        include_str!("../../../shaders/transpose.wgsl"),
    ),
];

/// Invocations per workgroup in the 1-D kernels.
const WORKGROUP_1D: u32 = 256;
/// Output tile of one matmul workgroup (`TM`, `TN` in matmul.wgsl).
const MATMUL_TILE: u32 = 64;
/// Output tile of one `matmul_large` workgroup (`TM`, `TN` in matmul_large.wgsl).
const MATMUL_LARGE_TILE: u32 = 128;
/// Outputs with at least this many rows and columns take `matmul_large`; smaller ones keep
/// the 64-wide tiles, which make 4x as many workgroups for a GPU's many cores. The best
/// crossover is not measured: on an H200, n = 1024 on the large kernel ran at 0.23x cuBLAS,
/// and 2048 at 0.47x.
const MATMUL_LARGE_FROM: u32 = 512;
/// Columns one `sum_axis0` workgroup sums (`COLUMNS` in reduce.wgsl).
const SUM_AXIS0_COLUMNS: u32 = 16;
/// Tile of one transpose workgroup.
const TRANSPOSE_TILE: u32 = 16;
/// Workgroup memory the kernels use at most (matmul_large: two slabs of 8 x 132 floats).
const WORKGROUP_STORAGE_BYTES: u32 = 8448;

/// Ops the device's queue may hold at once, from every task together. A task submits ops far
/// faster than a GPU runs large ones: unbounded, one task could queue minutes of device work
/// within its time limit, for every other task's ops to wait behind. So a submission first
/// waits, until its own task's deadline at most, for the oldest queued op to finish.
const MAX_QUEUED: usize = 16;

/// Defines [`Kernel`], one variant per compiled pipeline, from its shader file (an index in
/// [`SHADERS`]) and entry point; `Kernel::ALL` lists them in discriminant order.
macro_rules! kernels {
    ($($name:ident = ($file:literal, $entry:literal)),* $(,)?) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(usize)]
        enum Kernel {
            $($name),*
        }

        impl Kernel {
            const ALL: &[Kernel] = &[$(Self::$name),*];

            fn source(self) -> (usize, &'static str) {
                match self {
                    $(Self::$name => ($file, $entry)),*
                }
            }
        }
    };
}

kernels! {
    Matmul = (0, "matmul"),
    MatmulLarge = (1, "matmul_large"),
    Add = (2, "add"),
    Sub = (2, "sub"),
    Mul = (2, "mul"),
    Scale = (2, "scale"),
    Axpy = (2, "axpy"),
    Relu = (3, "relu"),
    ReluGrad = (3, "relu_grad"),
    Sigmoid = (3, "sigmoid_forward"),
    SigmoidGrad = (3, "sigmoid_grad"),
    Tanh = (3, "tanh_forward"),
    TanhGrad = (3, "tanh_grad"),
    SumAxis0 = (4, "sum_axis0"),
    SumAxis1 = (4, "sum_axis1"),
    XentForward = (5, "xent_forward"),
    XentBackward = (5, "xent_backward"),
    Transpose = (6, "transpose"),
}

/// The values of one kernel's `Params` uniform, laid out as `struct Params` is in every
/// shader (a test checks it against naga's layout of each).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct Params {
    len: u32,
    rows: u32,
    cols: u32,
    k: u32,
    alpha: f32,
    flags: u32,
    /// Workgroups along x in the dispatch grid, set by [`GpuBackend::dispatch`]: shaders
    /// flatten the grid with it.
    groups_x: u32,
    aux: u32,
}

// SAFETY: `Params` is `repr(C)`, all its fields are 4-byte `u32`/`f32` (no padding), and
// every bit pattern is valid for them. The host is little-endian (see runtime/tensor_fns.rs),
// as the uniform's bytes must be.
unsafe impl bytemuck::Zeroable for Params {}
// SAFETY: as for `Zeroable` above; it is also `Copy` and `'static`.
unsafe impl bytemuck::Pod for Params {}

/// What choosing an adapter needs to know of one: its info, and whether it runs compute
/// shaders at all.
#[derive(Clone, Debug)]
struct Candidate {
    info: wgpu::AdapterInfo,
    compute: bool,
}

/// The index of the adapter to open: the best of discrete, integrated, virtual and other
/// GPUs with compute shaders; software adapters (wgpu's `DeviceType::Cpu`: llvmpipe,
/// lavapipe) only if `allow_software`, and then last.
///
/// # Errors
///
/// [`ComputeError::NoAdapter`], saying what was found.
fn pick_adapter(candidates: &[Candidate], allow_software: bool) -> Result<usize, ComputeError> {
    let rank = |t: wgpu::DeviceType| match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| allow_software || c.info.device_type != wgpu::DeviceType::Cpu)
        .filter(|(_, c)| c.compute)
        .min_by_key(|(_, c)| rank(c.info.device_type))
        .map(|(i, _)| i)
        .ok_or_else(|| {
            let found: Vec<String> = candidates
                .iter()
                .map(|c| format!("{} ({:?})", c.info.name, c.info.device_type))
                .collect();
            ComputeError::NoAdapter {
                reason: if found.is_empty() {
                    "no Vulkan adapter found (is a Vulkan driver installed? for the software \
                     one, install Debian's mesa-vulkan-drivers)"
                        .to_owned()
                } else if allow_software {
                    format!(
                        "no adapter with compute shaders among: {}",
                        found.join(", ")
                    )
                } else {
                    format!(
                        "only software or unsuitable adapters found ({}); software adapters are \
                         taken only when allowed explicitly",
                        found.join(", ")
                    )
                },
            }
        })
}

/// wgpu compute shaders on one adapter. Cheap to share behind an `Arc`; all methods take
/// `&self` and may be called from several threads.
#[derive(Debug)]
pub struct GpuBackend {
    name: String,
    info: wgpu::AdapterInfo,
    device: wgpu::Device,
    queue: wgpu::Queue,
    layout: wgpu::BindGroupLayout,
    pipelines: Vec<wgpu::ComputePipeline>,
    /// The largest tensor buffer, in bytes: the smaller of the buffer and binding limits.
    max_tensor_bytes: u64,
    max_groups_per_dim: u32,
    live: LiveBytes,
    /// The ops submitted and maybe not finished, at most [`MAX_QUEUED`] (a few more while
    /// several threads submit at once).
    queued: Mutex<Queued>,
}

/// Submitted ops, each with the number of its place in the queue.
#[derive(Debug, Default)]
struct Queued {
    next: u64,
    ops: VecDeque<(u64, wgpu::SubmissionIndex)>,
}

impl GpuBackend {
    /// Opens the best Vulkan adapter: discrete, then integrated, then virtual GPUs; software
    /// adapters (llvmpipe, lavapipe) only if `allow_software`.
    ///
    /// # Errors
    ///
    /// [`ComputeError::NoAdapter`] when no adapter fits (the message says what was found),
    /// [`ComputeError::Device`] when the device or a pipeline cannot be made.
    pub fn new(allow_software: bool) -> Result<Self, ComputeError> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::VULKAN,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN));
        let candidates: Vec<Candidate> = adapters
            .iter()
            .map(|a| Candidate {
                info: a.get_info(),
                compute: a
                    .get_downlevel_capabilities()
                    .flags
                    .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS),
            })
            .collect();
        let adapter = &adapters[pick_adapter(&candidates, allow_software)?];
        let info = adapter.get_info();
        let limits = adapter.limits();
        check_limits(&info, &limits)?;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("shoal compute"),
            required_features: wgpu::Features::empty(),
            // Ask for everything the adapter has: the defaults cap storage bindings at 128 MiB.
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| ComputeError::Device {
            message: format!("request_device: {e}"),
        })?;
        // Validation and out-of-memory errors are caught by error scopes around each call;
        // anything else is logged rather than panicking the node (wgpu's default).
        device.on_uncaptured_error(std::sync::Arc::new(|err: wgpu::Error| {
            tracing::error!(%err, "uncaptured wgpu error");
        }));

        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let entry = |binding: u32, ty, min_size: usize| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: false,
                min_binding_size: NonZeroU64::new(min_size as u64),
            },
            count: None,
        };
        let storage = |read_only| wgpu::BufferBindingType::Storage { read_only };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("shoal kernel"),
            entries: &[
                entry(0, wgpu::BufferBindingType::Uniform, size_of::<Params>()),
                entry(1, storage(true), 4),
                entry(2, storage(true), 4),
                entry(3, storage(false), 4),
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("shoal kernel"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        // Bounds checks stay: the shapes behind every index are a tenant's. wgpu's loop
        // counter (`force_loop_bounding`), which guards against shaders that might never end,
        // is left out: every loop in our shaders is counted (a test checks the forms), and
        // its bound comes from a tensor's shape, under 2^30 elements since Vulkan's storage
        // buffer range is under 4 GiB, so no counter can wrap. On an H200 the counter cost
        // the 128-wide matmul 6-9% and the digits MLP step 12x (13.5 ms against 1.1), most
        // likely by keeping the driver from unrolling loops over register arrays.
        let checks = wgpu::ShaderRuntimeChecks {
            force_loop_bounding: false,
            ..wgpu::ShaderRuntimeChecks::checked()
        };
        let modules: Vec<wgpu::ShaderModule> = SHADERS
            .iter()
            .map(|(name, src)| {
                let desc = wgpu::ShaderModuleDescriptor {
                    label: Some(name),
                    source: wgpu::ShaderSource::Wgsl((*src).into()),
                };
                // SAFETY: the shaders are ours, never a tenant's, and none has a loop that
                // can run forever (above); bounds checks are on.
                unsafe { device.create_shader_module_trusted(desc, checks) }
            })
            .collect();
        let pipelines = Kernel::ALL
            .iter()
            .map(|k| {
                let (file, entry) = k.source();
                device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: Some(&pipeline_layout),
                    module: &modules[file],
                    entry_point: Some(entry),
                    compilation_options: wgpu::PipelineCompilationOptions::default(),
                    cache: None,
                })
            })
            .collect();
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(ComputeError::Device {
                message: format!("building pipelines: {err}"),
            });
        }

        let max_tensor_bytes = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let name = format!(
            "wgpu {:?}: {} ({:?})",
            info.backend, info.name, info.device_type
        );
        tracing::info!(backend = %name, max_tensor_bytes, "gpu compute backend ready");
        Ok(Self {
            name,
            info,
            device,
            queue,
            layout,
            pipelines,
            max_tensor_bytes,
            max_groups_per_dim: limits.max_compute_workgroups_per_dimension,
            live: LiveBytes::default(),
            queued: Mutex::default(),
        })
    }

    /// The adapter in use.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// Whether the adapter is a software rasterizer on the CPU (llvmpipe, lavapipe).
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// The largest tensor this device can hold, in bytes.
    pub fn max_tensor_bytes(&self) -> u64 {
        self.max_tensor_bytes
    }

    fn buffer<'t>(&self, tensor: &'t Tensor) -> Result<&'t wgpu::Buffer, ComputeError> {
        match &tensor.storage {
            Storage::Device(buf) => Ok(buf),
            Storage::Host(_) => Err(ComputeError::WrongBackend {
                tensor: "cpu",
                backend: "gpu",
            }),
        }
    }

    /// The tensor's size in bytes, if the device can hold it in one storage binding.
    fn checked_bytes(&self, shape: Shape) -> Result<u64, ComputeError> {
        let bytes = shape.byte_size()?;
        if bytes > self.max_tensor_bytes {
            return Err(ComputeError::DeviceLimit {
                what: "a tensor's storage buffer, in bytes",
                needed: bytes,
                limit: self.max_tensor_bytes,
            });
        }
        Ok(bytes)
    }

    /// A device buffer for a tensor of `shape`, after checking the device's limits.
    fn tensor_buffer(&self, shape: Shape) -> Result<wgpu::Buffer, ComputeError> {
        let bytes = self.checked_bytes(shape)?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("tensor"),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        match pollster::block_on(scope.pop()) {
            Some(err) => Err(ComputeError::Device {
                message: format!("allocating {bytes} bytes: {err}"),
            }),
            None => Ok(buffer),
        }
    }

    /// The dispatch grid for `groups` workgroups: `(x, y)` with `x * y >= groups`; shaders
    /// flatten it back with `groups_x`.
    fn grid(&self, groups: u64) -> Result<(u32, u32), ComputeError> {
        let max = u64::from(self.max_groups_per_dim.max(1));
        let x = groups.clamp(1, max);
        let y = groups.div_ceil(x).max(1);
        if y > max {
            return Err(ComputeError::DeviceLimit {
                what: "workgroups in one dispatch",
                needed: groups,
                limit: max * max,
            });
        }
        // Both are at most `max`, a u32.
        Ok((x as u32, y as u32))
    }

    /// Records one kernel dispatch of `groups` workgroups into `encoder`.
    fn dispatch(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernel: Kernel,
        params: Params,
        inputs: (&wgpu::Buffer, &wgpu::Buffer),
        out: &wgpu::Buffer,
        groups: u64,
    ) -> Result<(), ComputeError> {
        let (x, y) = self.grid(groups)?;
        let uniform = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: bytemuck::bytes_of(&Params {
                    groups_x: x,
                    ..params
                }),
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let buffers = [&uniform, inputs.0, inputs.1, out];
        let entries: Vec<_> = (0..)
            .zip(buffers)
            .map(|(binding, buffer)| wgpu::BindGroupEntry {
                binding,
                resource: buffer.as_entire_binding(),
            })
            .collect();
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("kernel"),
            layout: &self.layout,
            entries: &entries,
        });
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(kernel.source().1),
            timestamp_writes: None,
        });
        pass.set_pipeline(&self.pipelines[kernel as usize]);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(x, y, 1);
        Ok(())
    }

    /// Records `op` into `encoder`, writing `out`.
    fn record(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        op: TensorOp,
        inputs: &[&Tensor],
        out: &wgpu::Buffer,
        out_shape: Shape,
    ) -> Result<(), ComputeError> {
        let a = self.buffer(inputs[0])?;
        let b = match inputs.get(1) {
            Some(t) => self.buffer(t)?,
            None => a,
        };
        let sa = inputs[0].shape;
        let sb = inputs.get(1).map_or(sa, |t| t.shape);
        // Shapes were validated by output_shape and sizes by the buffer limit (< 2^32 bytes
        // of f32, so every element count fits a u32).
        let len = u32::try_from(out_shape.elements()?).map_err(|_| ComputeError::DeviceLimit {
            what: "elements in one tensor",
            needed: out_shape.rows as u64 * out_shape.cols as u64,
            limit: u32::MAX as u64,
        })?;
        let b_len = sb.rows.saturating_mul(sb.cols);
        let elementwise_groups = u64::from(len).div_ceil(WORKGROUP_1D.into());
        let base = Params {
            len,
            rows: sa.rows,
            cols: sa.cols,
            aux: b_len,
            ..Params::default()
        };
        let with_alpha = |alpha| Params { alpha, ..base };
        let (kernel, params, inputs, groups) = match op {
            TensorOp::Matmul { trans_a, trans_b } => {
                let params = Params {
                    rows: out_shape.rows,
                    cols: out_shape.cols,
                    k: if trans_a { sa.rows } else { sa.cols },
                    flags: u32::from(trans_a) | (u32::from(trans_b) << 1),
                    ..base
                };
                let large =
                    out_shape.rows >= MATMUL_LARGE_FROM && out_shape.cols >= MATMUL_LARGE_FROM;
                let (kernel, tile) = if large {
                    (Kernel::MatmulLarge, MATMUL_LARGE_TILE)
                } else {
                    (Kernel::Matmul, MATMUL_TILE)
                };
                let tiles = u64::from(out_shape.rows.div_ceil(tile))
                    * u64::from(out_shape.cols.div_ceil(tile));
                (kernel, params, (a, b), tiles)
            }
            TensorOp::Binary(bop) => {
                let kernel = match bop {
                    BinaryOp::Add => Kernel::Add,
                    BinaryOp::Sub => Kernel::Sub,
                    BinaryOp::Mul => Kernel::Mul,
                };
                (kernel, base, (a, b), elementwise_groups)
            }
            TensorOp::Scale { alpha } => {
                (Kernel::Scale, with_alpha(alpha), (a, a), elementwise_groups)
            }
            TensorOp::Axpy { alpha } => {
                (Kernel::Axpy, with_alpha(alpha), (a, b), elementwise_groups)
            }
            TensorOp::Activation(u) | TensorOp::ActivationGrad(u) => {
                let grad = matches!(op, TensorOp::ActivationGrad(_));
                let kernel = match (u, grad) {
                    (UnaryOp::Relu, false) => Kernel::Relu,
                    (UnaryOp::Relu, true) => Kernel::ReluGrad,
                    (UnaryOp::Sigmoid, false) => Kernel::Sigmoid,
                    (UnaryOp::Sigmoid, true) => Kernel::SigmoidGrad,
                    (UnaryOp::Tanh, false) => Kernel::Tanh,
                    (UnaryOp::Tanh, true) => Kernel::TanhGrad,
                };
                (kernel, base, (a, b), elementwise_groups)
            }
            TensorOp::Reduce { op: rop, axis } => {
                let (kernel, count, groups) = match axis {
                    ReduceAxis::Axis0 => (
                        Kernel::SumAxis0,
                        sa.rows,
                        u64::from(sa.cols).div_ceil(SUM_AXIS0_COLUMNS.into()),
                    ),
                    ReduceAxis::Axis1 => (Kernel::SumAxis1, sa.cols, u64::from(sa.rows)),
                };
                let alpha = match rop {
                    ReduceOp::Sum => 1.0,
                    ReduceOp::Mean => 1.0 / count as f32,
                };
                (kernel, with_alpha(alpha), (a, a), groups)
            }
            TensorOp::SoftmaxXent(XentReduction::PerRow) => {
                (Kernel::XentForward, base, (a, b), sa.rows.into())
            }
            TensorOp::SoftmaxXent(XentReduction::Mean) => {
                // Per-row losses, then their mean as a sum scaled by 1 / rows.
                let per_row = self.tensor_buffer(Shape::new(sa.rows, 1))?;
                let rows = sa.rows.into();
                self.dispatch(encoder, Kernel::XentForward, base, (a, b), &per_row, rows)?;
                let mean = Params {
                    len: 1,
                    rows: sa.rows,
                    cols: 1,
                    alpha: 1.0 / sa.rows as f32,
                    ..Params::default()
                };
                let inputs = (&per_row, &per_row);
                return self.dispatch(encoder, Kernel::SumAxis0, mean, inputs, out, 1);
            }
            TensorOp::SoftmaxXentGrad => {
                let params = with_alpha(1.0 / sa.rows as f32);
                (Kernel::XentBackward, params, (a, b), sa.rows.into())
            }
            TensorOp::Transpose => {
                let tiles = u64::from(sa.rows.div_ceil(TRANSPOSE_TILE))
                    * u64::from(sa.cols.div_ceil(TRANSPOSE_TILE));
                (Kernel::Transpose, base, (a, a), tiles)
            }
        };
        self.dispatch(encoder, kernel, params, inputs, out, groups)
    }

    /// The ops submitted and maybe not finished.
    fn queued(&self) -> MutexGuard<'_, Queued> {
        // The queue's state is consistent between statements: a panic elsewhere cannot
        // break it.
        self.queued.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the queue has room for one more op ([`MAX_QUEUED`]), or `budget`'s
    /// deadline passes.
    fn wait_for_room(&self, budget: &OpBudget) -> Result<(), ComputeError> {
        loop {
            let (number, oldest) = {
                let queued = self.queued();
                match queued.ops.front() {
                    Some((number, index)) if queued.ops.len() >= MAX_QUEUED => {
                        (*number, index.clone())
                    }
                    _ => return Ok(()),
                }
            };
            let timeout = budget.time_left();
            if timeout == Some(std::time::Duration::ZERO) {
                return Err(ComputeError::Cancelled {
                    overrun: Overrun::Deadline,
                });
            }
            let poll = wgpu::PollType::Wait {
                submission_index: Some(oldest),
                timeout,
            };
            match self.device.poll(poll) {
                // It is done: off the queue, unless another thread took it off already.
                Ok(_) => self.queued().ops.retain(|(n, _)| *n != number),
                Err(wgpu::PollError::Timeout) => {
                    return Err(ComputeError::Cancelled {
                        overrun: Overrun::Deadline,
                    });
                }
                Err(e) => {
                    return Err(ComputeError::Device {
                        message: format!("poll: {e}"),
                    });
                }
            }
        }
    }

    /// Waits for the queue to drain; benchmarks use it to time whole ops.
    ///
    /// # Errors
    ///
    /// [`ComputeError::Device`] if the device is lost.
    pub fn wait_idle(&self) -> Result<(), ComputeError> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| ComputeError::Device {
                message: format!("poll: {e}"),
            })
    }
}

/// Checks that the adapter can run our kernels at all.
fn check_limits(info: &wgpu::AdapterInfo, limits: &wgpu::Limits) -> Result<(), ComputeError> {
    let needs = [
        (
            "max_compute_invocations_per_workgroup",
            limits.max_compute_invocations_per_workgroup,
            256,
        ),
        (
            "max_compute_workgroup_size_x",
            limits.max_compute_workgroup_size_x,
            256,
        ),
        (
            "max_compute_workgroup_storage_size",
            limits.max_compute_workgroup_storage_size,
            WORKGROUP_STORAGE_BYTES,
        ),
        (
            "max_storage_buffers_per_shader_stage",
            limits.max_storage_buffers_per_shader_stage,
            3,
        ),
    ];
    match needs.into_iter().find(|&(_, have, need)| have < need) {
        Some((what, have, need)) => Err(ComputeError::NoAdapter {
            reason: format!(
                "adapter {} has {what} = {have}, kernels need {need}",
                info.name
            ),
        }),
        None => Ok(()),
    }
}

impl Backend for GpuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Gpu
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn live_bytes(&self) -> u64 {
        self.live.get()
    }

    fn upload(&self, data: Vec<f32>, shape: Shape) -> Result<Tensor, ComputeError> {
        // Size limits first: they say more about a huge shape than its data length does.
        self.checked_bytes(shape)?;
        let expected = shape.elements()?;
        if data.len() != expected {
            return Err(ComputeError::DataLength {
                shape,
                expected,
                got: data.len(),
            });
        }
        let buffer = self.tensor_buffer(shape)?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        self.queue
            .write_buffer(&buffer, 0, bytemuck::cast_slice(&data));
        // Submitted at once: wgpu keeps the staging copy, and the buffer, until the next
        // submission, which a task that uploads and frees without an op would never make.
        self.queue.submit([]);
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(ComputeError::Device {
                message: format!("upload: {err}"),
            });
        }
        Ok(self.live.tensor(shape, Storage::Device(buffer)))
    }

    fn read_into(&self, tensor: &Tensor, out: &mut [f32]) -> Result<(), ComputeError> {
        let src = self.buffer(tensor)?;
        let len = tensor.shape.elements()?;
        let got = out.len();
        let dst = out
            .get_mut(..len)
            .ok_or(ComputeError::BufferTooSmall { needed: len, got })?;
        let bytes = tensor.shape.byte_size()?;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("readback"),
            });
        encoder.copy_buffer_to_buffer(src, 0, &staging, 0, bytes);
        self.queue.submit([encoder.finish()]);
        let (tx, rx) = mpsc::sync_channel(1);
        staging
            .slice(..)
            .map_async(wgpu::MapMode::Read, move |result| {
                // The receiver waits below; if it is gone there is nobody to tell.
                let _ = tx.send(result);
            });
        self.wait_idle()?;
        rx.recv()
            .map_err(|_| ComputeError::Device {
                message: "readback callback never ran".into(),
            })?
            .map_err(|e| ComputeError::Device {
                message: format!("mapping readback: {e}"),
            })?;
        {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| ComputeError::Device {
                    message: format!("readback view: {e}"),
                })?;
            for (v, chunk) in dst.iter_mut().zip(view.chunks_exact(4)) {
                *v = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            }
        }
        staging.unmap();
        Ok(())
    }

    /// Charges `budget` nothing: the device's time is wall time, which the task's own clock
    /// counts; a task already out of time submits nothing.
    fn execute(
        &self,
        op: TensorOp,
        inputs: &[&Tensor],
        budget: &OpBudget,
    ) -> Result<Tensor, ComputeError> {
        let shape = check_inputs(op, inputs)?;
        budget.check()?;
        let out = self.tensor_buffer(shape)?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(op.name()),
            });
        let recorded = self
            .record(&mut encoder, op, inputs, &out, shape)
            .and_then(|()| self.wait_for_room(budget));
        if recorded.is_ok() {
            let index = self.queue.submit([encoder.finish()]);
            let mut queued = self.queued();
            let number = queued.next;
            queued.next += 1;
            queued.ops.push_back((number, index));
        }
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(ComputeError::Device {
                message: format!("{}: {err}", op.name()),
            });
        }
        recorded?;
        Ok(self.live.tensor(shape, Storage::Device(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shader parses and validates with naga, independently of any adapter, and every
    /// entry point the backend uses exists.
    #[test]
    fn shaders_validate_with_naga() {
        for (name, src) in SHADERS {
            let module = naga::front::wgsl::parse_str(src)
                .unwrap_or_else(|e| panic!("{name} does not parse:\n{}", e.emit_to_string(src)));
            naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::empty(),
            )
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name} does not validate: {e:?}"));
        }
        for kernel in Kernel::ALL {
            let (file, entry) = kernel.source();
            let module = naga::front::wgsl::parse_str(SHADERS[file].1).unwrap();
            assert!(
                module.entry_points.iter().any(|e| e.name == entry),
                "{} has no entry point {entry}",
                SHADERS[file].0
            );
        }
        for (i, kernel) in Kernel::ALL.iter().enumerate() {
            assert_eq!(*kernel as usize, i, "Kernel::ALL is in discriminant order");
        }
    }

    /// The device's queue holds at most [`MAX_QUEUED`] noted ops: past that, each new op
    /// waits for the oldest (here already done, since lavapipe runs one submission while
    /// the next is made) and takes it off. A task whose deadline has passed gets no room.
    /// How long a full queue keeps a task waiting needs a GPU that runs ahead of its
    /// submitter; the gpu bench's queue-bound part measures that.
    #[test]
    fn the_device_queue_holds_at_most_the_bound() {
        let gpu = GpuBackend::new(true).unwrap_or_else(|e| {
            panic!("no wgpu adapter ({e}): install Debian's mesa-vulkan-drivers for lavapipe")
        });
        let shape = Shape::new(64, 64);
        let a = gpu.upload(vec![1.0; 64 * 64], shape).unwrap();
        let matmul = TensorOp::Matmul {
            trans_a: false,
            trans_b: false,
        };
        let queued = || gpu.queued().ops.len();
        let mut outs = Vec::new();
        for i in 0..3 * MAX_QUEUED {
            outs.push(
                gpu.execute(matmul, &[&a, &a], &OpBudget::unlimited())
                    .unwrap(),
            );
            assert_eq!(queued(), (i + 1).min(MAX_QUEUED));
        }
        let spent = OpBudget::new(std::time::Instant::now(), std::time::Duration::MAX);
        let err = gpu.wait_for_room(&spent).unwrap_err();
        assert!(
            matches!(
                err,
                ComputeError::Cancelled {
                    overrun: Overrun::Deadline
                }
            ),
            "{err}"
        );
        let mut last = vec![0.0; 64 * 64];
        gpu.read_into(&outs[3 * MAX_QUEUED - 1], &mut last).unwrap();
        assert!(last.iter().all(|v| *v == 64.0));
    }

    /// An upload is submitted at once. wgpu keeps a written buffer's staging copy (and the
    /// buffer) until the next submission, so a task that uploads and frees without an op
    /// would pile up host and device memory its tensor quota never sees.
    #[test]
    fn uploads_without_ops_do_not_pile_up() {
        let gpu = GpuBackend::new(true).unwrap_or_else(|e| {
            panic!("no wgpu adapter ({e}): install Debian's mesa-vulkan-drivers for lavapipe")
        });
        let rss = || {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let kib: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap();
            kib << 10
        };
        // 64 MiB each.
        let (shape, n) = (Shape::new(4096, 4096), 4096 * 4096);
        drop(gpu.upload(vec![1.0; n], shape).unwrap());
        let base = rss();
        for _ in 0..16 {
            drop(gpu.upload(vec![1.0; n], shape).unwrap());
        }
        let rise = rss().saturating_sub(base) >> 20;
        assert!(
            rise < 4 * 64,
            "RSS rose {rise} MiB over 16 uploads of 64 MiB, each freed"
        );
    }

    /// Every loop in the shaders is a counted `for`: it steps its counter up by 1 or by a
    /// constant to a bound, or halves a stride to 0. The backend turns wgpu's loop counter
    /// off on that promise (`GpuBackend::new`), so a loop of another form must fail here
    /// until someone has checked that it ends.
    #[test]
    fn every_shader_loop_is_counted() {
        for (name, src) in SHADERS {
            for line in src.lines().map(str::trim) {
                let code = line.split("//").next().unwrap_or("");
                let words: Vec<&str> = code
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .collect();
                assert!(
                    !words.contains(&"loop") && !words.contains(&"while"),
                    "{name}: `{line}` is not a counted for loop"
                );
                let Some(header) = code.strip_prefix("for (var ") else {
                    assert!(!words.contains(&"for"), "{name}: `{line}`");
                    continue;
                };
                let var = header.split(' ').next().unwrap();
                let parts: Vec<&str> = header.split(';').map(str::trim).collect();
                assert_eq!(parts.len(), 3, "{name}: `{line}`");
                let counted_up = parts[1].starts_with(&format!("{var} < "))
                    && (parts[2] == format!("{var}++) {{")
                        || parts[2].starts_with(&format!("{var} += ")));
                let halved =
                    parts[1] == format!("{var} > 0u") && parts[2] == format!("{var} >>= 1u) {{");
                assert!(counted_up || halved, "{name}: `{line}`");
                if let Some(step) = parts[2].strip_prefix(&format!("{var} += ")) {
                    let step = step.trim_end_matches(") {");
                    assert!(
                        step.ends_with('u') && step[..step.len() - 1].parse::<u32>().is_ok()
                            || step.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
                        "{name}: `{line}` steps by {step}, not a constant"
                    );
                }
            }
        }
    }

    /// A Rust field type and the WGSL scalar it stands for in `Params`.
    trait WgslScalar {
        const SCALAR: naga::Scalar;
    }
    impl WgslScalar for u32 {
        const SCALAR: naga::Scalar = naga::Scalar::U32;
    }
    impl WgslScalar for f32 {
        const SCALAR: naga::Scalar = naga::Scalar::F32;
    }
    fn scalar_of<T: WgslScalar>(_: &T) -> naga::Scalar {
        T::SCALAR
    }

    /// The Rust side of `Params.name`: offset, WGSL scalar, and the word `p` holds there.
    fn rust_field(p: &Params, name: &str) -> Option<(usize, naga::Scalar, u32)> {
        use std::mem::offset_of;
        Some(match name {
            "len" => (offset_of!(Params, len), scalar_of(&p.len), p.len),
            "rows" => (offset_of!(Params, rows), scalar_of(&p.rows), p.rows),
            "cols" => (offset_of!(Params, cols), scalar_of(&p.cols), p.cols),
            "k" => (offset_of!(Params, k), scalar_of(&p.k), p.k),
            "alpha" => (
                offset_of!(Params, alpha),
                scalar_of(&p.alpha),
                p.alpha.to_bits(),
            ),
            "flags" => (offset_of!(Params, flags), scalar_of(&p.flags), p.flags),
            "groups_x" => (
                offset_of!(Params, groups_x),
                scalar_of(&p.groups_x),
                p.groups_x,
            ),
            "aux" => (offset_of!(Params, aux), scalar_of(&p.aux), p.aux),
            _ => return None,
        })
    }

    /// The uniform at binding 0 of every shader is `struct Params`, and naga lays it out
    /// exactly as the Rust struct is (member by member: name, offset, scalar type; and the
    /// size), and its bytes hold each value where the shader reads it. Editing
    /// either side alone fails here, not as wrong numbers on a GPU.
    #[test]
    fn params_layout_matches_the_shaders() {
        let p = Params {
            len: 1,
            rows: 2,
            cols: 3,
            k: 4,
            alpha: 0.5,
            flags: 6,
            groups_x: 7,
            aux: 8,
        };
        let bytes = bytemuck::bytes_of(&p);
        for (name, src) in SHADERS {
            let module = naga::front::wgsl::parse_str(src).unwrap();
            let mut layouter = naga::proc::Layouter::default();
            layouter.update(module.to_ctx()).unwrap();
            let (_, uniform) = module
                .global_variables
                .iter()
                .find(|(_, g)| {
                    g.binding
                        .as_ref()
                        .is_some_and(|b| b.group == 0 && b.binding == 0)
                })
                .unwrap_or_else(|| panic!("{name} binds nothing at group 0, binding 0"));
            assert_eq!(uniform.space, naga::AddressSpace::Uniform, "{name}");
            let ty = &module.types[uniform.ty];
            assert_eq!(ty.name.as_deref(), Some("Params"), "{name}");
            let naga::TypeInner::Struct { members, .. } = &ty.inner else {
                panic!("{name}: Params is not a struct");
            };
            assert_eq!(
                layouter[uniform.ty].size as usize,
                std::mem::size_of::<Params>(),
                "{name}: size of Params"
            );
            let mut covered = 0;
            for m in members {
                let member = m.name.as_deref().unwrap_or("?");
                let (offset, scalar, word) = rust_field(&p, member)
                    .unwrap_or_else(|| panic!("{name}: Params.{member} has no Rust field"));
                assert_eq!(
                    m.offset as usize, offset,
                    "{name}: offset of Params.{member}"
                );
                assert_eq!(
                    module.types[m.ty].inner,
                    naga::TypeInner::Scalar(scalar),
                    "{name}: type of Params.{member}"
                );
                let at = &bytes[offset..offset + 4];
                assert_eq!(
                    u32::from_le_bytes(at.try_into().unwrap()),
                    word,
                    "{name}: Params's bytes hold {member} where the shader reads it"
                );
                covered += layouter[m.ty].size as usize;
            }
            assert_eq!(
                covered,
                std::mem::size_of::<Params>(),
                "{name}: Params has fields the shader lacks, or padding"
            );
        }
    }

    fn adapter(name: &str, device_type: wgpu::DeviceType, compute: bool) -> Candidate {
        Candidate {
            info: wgpu::AdapterInfo {
                name: name.into(),
                ..wgpu::AdapterInfo::new(device_type, wgpu::Backend::Vulkan)
            },
            compute,
        }
    }

    /// `auto` (no software) never takes a software adapter; a hardware GPU wins over one
    /// even when software is allowed; adapters without compute shaders are never taken.
    #[test]
    fn adapter_choice() {
        use wgpu::DeviceType::{Cpu, DiscreteGpu, IntegratedGpu, VirtualGpu};
        let lavapipe = adapter("llvmpipe (LLVM 19)", Cpu, true);
        let h100 = adapter("NVIDIA H100", DiscreteGpu, true);
        let igpu = adapter("Intel UHD", IntegratedGpu, true);

        let only_software = [lavapipe.clone()];
        let err = pick_adapter(&only_software, false).unwrap_err();
        assert!(matches!(err, ComputeError::NoAdapter { .. }), "{err}");
        assert!(
            err.to_string().contains("llvmpipe (LLVM 19) (Cpu)"),
            "{err}"
        );
        assert_eq!(pick_adapter(&only_software, true).unwrap(), 0);

        for allow_software in [false, true] {
            let both = [lavapipe.clone(), h100.clone()];
            assert_eq!(pick_adapter(&both, allow_software).unwrap(), 1);
            let three = [igpu.clone(), lavapipe.clone(), h100.clone()];
            assert_eq!(pick_adapter(&three, allow_software).unwrap(), 2);
            let virt = [lavapipe.clone(), adapter("virtio", VirtualGpu, true)];
            assert_eq!(pick_adapter(&virt, allow_software).unwrap(), 1);
        }

        let no_compute = [adapter("old", DiscreteGpu, false), lavapipe.clone()];
        assert!(pick_adapter(&no_compute, false).is_err());
        assert_eq!(pick_adapter(&no_compute, true).unwrap(), 1);

        let err = pick_adapter(&[], true).unwrap_err();
        assert!(err.to_string().contains("mesa-vulkan-drivers"), "{err}");
    }
}
