//! The GPUs this worker build can see, through the CUDA driver (cudarc, as
//! candle loads it): index, name, UUID, memory, compute capability and the
//! driver's version, and whether the driver can hibernate a GPU process —
//! the inventory the gateway's placer takes (`thaw-worker --gpu-info`).

use serde_json::Value;

#[cfg(feature = "cuda")]
#[allow(unsafe_code)] // pinned memory and asynchronous copies
pub mod pinned;
pub mod plan;

/// `{"cuda": …, "driver_version": …, "gpus": […], "hibernation":
/// {"supported": …, "reason": …}}`, with the reason when there are none.
pub fn inventory() -> Value {
    #[cfg(feature = "cuda")]
    {
        cuda::inventory()
    }
    #[cfg(not(feature = "cuda"))]
    {
        serde_json::json!({
            "cuda": false,
            "gpus": [],
            "reason": "this worker is built without the cuda feature (scripts/build-cuda.sh builds it)",
            "hibernation": {"supported": false, "reason": "this worker is built without the cuda feature"},
        })
    }
}

/// Uploads the file at `path` (a snapshot's weights) to GPU `ordinal` from
/// its mapping, after reading it once so that it comes from the page cache,
/// by several methods: `pageable` (64 MiB pieces through candle's copy from
/// pageable memory), `pinned` and `pinned_read` (the chunked, overlapped
/// upload through pinned staging buffers, `pinned`, under a few staging
/// settings, the slots filled from the mapping or read from the file), and
/// copies from the mapping registered with the driver. Bytes, seconds and GB/s for each; the
/// top-level `gb_per_s` is the best (the GPU suite's "thaw upload" figure,
/// bench/gpu/run.sh).
pub fn upload_bench(path: &std::path::Path, ordinal: usize) -> Value {
    #[cfg(feature = "cuda")]
    {
        cuda::upload_bench(path, ordinal)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (path, ordinal);
        serde_json::json!({"skipped": "this worker is built without the cuda feature"})
    }
}

/// A CUDA UUID as nvidia-smi writes it.
pub fn format_uuid(bytes: &[u8; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(feature = "cuda")]
#[allow(unsafe_code)] // one driver call cudarc has no safe wrapper for
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{sys, CudaContext};
    use serde_json::{json, Value};

    pub(super) fn inventory() -> Value {
        let count = match CudaContext::device_count() {
            Ok(n) => n,
            Err(e) => {
                let reason = format!("the CUDA driver: {e}");
                return json!({"cuda": true, "gpus": [], "reason": reason,
                              "hibernation": {"supported": false, "reason": reason}});
            }
        };
        let mut version = 0i32;
        // SAFETY: cuDriverGetVersion writes one int through the pointer,
        // which points at a live local for the whole call.
        let driver = unsafe { sys::cuDriverGetVersion(&mut version) }
            .result()
            .ok()
            .map(|()| format!("{}.{}", version / 1000, version % 1000 / 10));
        // Held until the hibernation probe has asked about this process.
        let mut contexts = Vec::new();
        let gpus: Vec<Value> = (0..count.max(0) as usize)
            .map(|i| match CudaContext::new(i) {
                Ok(ctx) => {
                    contexts.push(ctx.clone());
                    let (free, total) = ctx.mem_get_info().unwrap_or((0, 0));
                    let uuid = ctx
                        .uuid()
                        .map(|u| super::format_uuid(&u.bytes.map(|b| b as u8)))
                        .unwrap_or_default();
                    json!({
                        "index": i,
                        "name": ctx.name().unwrap_or_default(),
                        "uuid": uuid,
                        "total_bytes": total,
                        "free_bytes": free,
                        "compute_capability": ctx.compute_capability().ok(),
                    })
                }
                Err(e) => json!({"index": i, "error": e.to_string()}),
            })
            .collect();
        // After the contexts above: the driver is asked about this process.
        let hibernation = if !contexts.is_empty() {
            crate::hibernate::detect()
        } else {
            json!({"supported": false, "reason": "no GPU could be opened"})
        };
        json!({"cuda": true, "driver_version": driver, "gpus": gpus, "hibernation": hibernation})
    }

    pub(super) fn upload_bench(path: &std::path::Path, ordinal: usize) -> Value {
        match upload(path, ordinal) {
            Ok(v) => v,
            Err(e) => json!({"error": e.to_string()}),
        }
    }

    fn upload(path: &std::path::Path, ordinal: usize) -> anyhow::Result<Value> {
        let file = thaw_snapshot::mmap::MappedFile::open(path)?;
        let bytes = file.bytes();
        // From the page cache: every page read once first.
        let touched: u64 = bytes.iter().step_by(4096).map(|&b| u64::from(b)).sum();
        let pageable = pageable(bytes, ordinal)?;
        let tensors = super::plan::safetensors_tensors(bytes).unwrap_or_else(|_| {
            vec![super::plan::TensorBytes {
                name: "file".into(),
                range: 0..bytes.len() as u64,
            }]
        });
        let ctx = CudaContext::new(ordinal)?;
        let read = std::fs::File::open(path)?;
        let mut pinned = Vec::new();
        let mut pinned_read = Vec::new();
        for (chunk_mib, slots, streams, threads) in stagings() {
            let staging = super::plan::Staging {
                chunk_bytes: chunk_mib << 20,
                slots,
                streams,
            };
            for (source, out) in [
                (super::plan::Source::Mapped(bytes), &mut pinned),
                (super::plan::Source::File(&read), &mut pinned_read),
            ] {
                out.push(
                    match pinned_upload(&ctx, source, bytes, &tensors, staging, threads) {
                        Ok(v) => v,
                        Err(e) => json!({"chunk_mib": chunk_mib, "error": e.to_string()}),
                    },
                );
            }
        }
        let registered = [2, 8].map(|streams| {
            registered(&ctx, bytes, streams)
                .unwrap_or_else(|e| json!({"streams": streams, "error": e.to_string()}))
        });
        let pipelined = [(2, 256), (4, 256), (8, 128)].map(|(threads, mib)| {
            registered_pipelined(&ctx, bytes, threads, mib << 20).unwrap_or_else(
                |e| json!({"threads": threads, "piece_mib": mib, "error": e.to_string()}),
            )
        });
        let best = std::iter::once(&pageable)
            .chain(&pinned)
            .chain(&pinned_read)
            .chain(&registered)
            .chain(&pipelined)
            .filter_map(|m| m["gb_per_s"].as_f64())
            .fold(0.0, f64::max);
        Ok(json!({
            "bytes": bytes.len(),
            "gb_per_s": best,
            "methods": {
                "pageable": pageable,
                "pinned": pinned,
                "pinned_read": pinned_read,
                "registered": registered,
                "registered_pipelined": pipelined,
            },
            "checksum_of_touch": touched % 251,
        }))
    }

    /// Staging settings the pinned method is measured with: chunk MiB,
    /// pinned slots, streams, CPU threads.
    /// (The first two were the fastest on an H200 with 16 CPU cores: 37–39
    /// GB/s from the page cache, against a 55 GB/s pinned copy ceiling.)
    const STAGINGS: [(u64, usize, usize, usize); 4] = [
        (2, 128, 4, 16),
        (4, 64, 4, 12),
        (8, 8, 2, 4),
        (32, 16, 4, 8),
    ];

    /// [`STAGINGS`], or the settings in `THAW_UPLOAD_STAGINGS`
    /// (`CHUNK_MIB x SLOTS x STREAMS x THREADS`, comma-separated) for a
    /// device session that tries others.
    fn stagings() -> Vec<(u64, usize, usize, usize)> {
        let parse = |s: &str| -> Option<(u64, usize, usize, usize)> {
            let v: Vec<usize> = s
                .split('x')
                .map(|n| n.trim().parse().ok())
                .collect::<Option<_>>()?;
            match v[..] {
                [c, sl, st, t] if c > 0 && sl > 0 && st > 0 && t > 0 => Some((c as u64, sl, st, t)),
                _ => None,
            }
        };
        std::env::var("THAW_UPLOAD_STAGINGS")
            .ok()
            .and_then(|v| v.split(',').map(parse).collect::<Option<Vec<_>>>())
            .unwrap_or_else(|| STAGINGS.to_vec())
    }

    /// A device buffer of `len` bytes (its address) and `streams` streams
    /// to copy into it on, with `ctx` bound to this thread.
    fn destination(
        ctx: &std::sync::Arc<CudaContext>,
        len: usize,
        streams: usize,
    ) -> anyhow::Result<(
        candle_core::cuda_backend::cudarc::driver::CudaSlice<u8>,
        sys::CUdeviceptr,
        Vec<std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>>,
    )> {
        use candle_core::cuda_backend::cudarc::driver::DevicePtr;
        ctx.bind_to_thread()?;
        let setup = ctx.default_stream();
        let memory = setup.alloc_zeros::<u8>(len.max(1))?;
        setup.synchronize()?;
        let base = memory.device_ptr(&setup).0;
        let queues = (0..streams)
            .map(|_| ctx.new_stream())
            .collect::<Result<Vec<_>, _>>()?;
        Ok((memory, base, queues))
    }

    /// The mapping registered piece by piece while earlier pieces copy:
    /// `threads` threads, each registering its pieces (`piece` bytes, every
    /// `threads`-th) and issuing each one's copy on its own stream at once;
    /// every piece is unregistered once its stream has finished. Timed as a
    /// whole, registration included.
    fn registered_pipelined(
        ctx: &std::sync::Arc<CudaContext>,
        bytes: &[u8],
        threads: usize,
        piece: usize,
    ) -> anyhow::Result<Value> {
        // The buffer lives to the end: the copies write into it.
        let (_memory, base, queues) = destination(ctx, bytes.len(), threads)?;
        let pieces: Vec<&[u8]> = bytes.chunks(piece).collect();
        let start = std::time::Instant::now();
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let (queue, pieces) = (&queues[t], &pieces);
                    scope.spawn(move || -> anyhow::Result<()> {
                        ctx.bind_to_thread()?;
                        let mut registered = Vec::new();
                        let mut outcome = Ok(());
                        for (i, p) in pieces.iter().enumerate().skip(t).step_by(threads) {
                            let pointer = p.as_ptr() as *mut std::ffi::c_void;
                            // SAFETY: a piece of this process's live mapping,
                            // registered read-only and unregistered below,
                            // after its stream has finished, before the
                            // mapping can go away.
                            let r = unsafe {
                                sys::cuMemHostRegister_v2(
                                    pointer,
                                    p.len(),
                                    sys::CU_MEMHOSTREGISTER_READ_ONLY,
                                )
                            }
                            .result();
                            if let Err(e) = r {
                                outcome = Err(e);
                                break;
                            }
                            registered.push(pointer);
                            let offset = (i * piece) as u64;
                            // SAFETY: the source stays registered until after
                            // the synchronisation below; the destination lies
                            // in `memory` (the piece's offset plus its length
                            // is at most the mapping's length).
                            let r = unsafe {
                                sys::cuMemcpyHtoDAsync_v2(
                                    base + offset,
                                    p.as_ptr().cast(),
                                    p.len(),
                                    queue.cu_stream(),
                                )
                            }
                            .result();
                            if let Err(e) = r {
                                outcome = Err(e);
                                break;
                            }
                        }
                        queue.synchronize()?;
                        for pointer in registered {
                            // SAFETY: registered above; its copy has finished.
                            unsafe { sys::cuMemHostUnregister(pointer) }.result()?;
                        }
                        Ok(outcome?)
                    })
                })
                .collect();
            for w in workers {
                w.join()
                    .map_err(|_| anyhow::anyhow!("an upload thread panicked"))??;
            }
            Ok::<(), anyhow::Error>(())
        })?;
        let seconds = start.elapsed().as_secs_f64();
        Ok(json!({
            "threads": threads,
            "piece_mib": piece >> 20,
            "seconds": seconds,
            "gb_per_s": bytes.len() as f64 / seconds / 1e9,
            "path": "pieces of the mapping registered (read-only) on several threads, each copied as soon as it is registered",
        }))
    }

    /// The mapping itself pinned (`cuMemHostRegister`, read-only) and
    /// copied to the device straight from it in 64 MiB pieces over
    /// `streams` streams: no staging copy on the CPU. The registration is
    /// timed apart (it pins every page of the range) and counted in
    /// `gb_per_s`; `copy_gb_per_s` is the copies alone.
    fn registered(
        ctx: &std::sync::Arc<CudaContext>,
        bytes: &[u8],
        streams: usize,
    ) -> anyhow::Result<Value> {
        // The buffer lives to the end: the copies write into it.
        let (_memory, base, queues) = destination(ctx, bytes.len(), streams)?;
        let pointer = bytes.as_ptr() as *mut std::ffi::c_void;
        let start = std::time::Instant::now();
        // SAFETY: the range is this process's live, read-only mapping of
        // the file, registered read-only, and unregistered below before
        // the mapping can go away.
        unsafe {
            sys::cuMemHostRegister_v2(pointer, bytes.len(), sys::CU_MEMHOSTREGISTER_READ_ONLY)
        }
        .result()?;
        let registered_s = start.elapsed().as_secs_f64();
        let copying = std::time::Instant::now();
        let mut offset = 0u64;
        let mut result = Ok(());
        for (i, piece) in bytes.chunks(64 << 20).enumerate() {
            // SAFETY: the source is registered host memory that stays
            // registered until every stream has synchronised below; the
            // destination lies inside `memory` (offsets below its length).
            let issued = unsafe {
                sys::cuMemcpyHtoDAsync_v2(
                    base + offset,
                    piece.as_ptr().cast(),
                    piece.len(),
                    queues[i % streams].cu_stream(),
                )
            }
            .result();
            if let Err(e) = issued {
                result = Err(e);
                break;
            }
            offset += piece.len() as u64;
        }
        for q in &queues {
            q.synchronize()?;
        }
        let copy_s = copying.elapsed().as_secs_f64();
        // SAFETY: registered above; every copy from it has completed.
        unsafe { sys::cuMemHostUnregister(pointer) }.result()?;
        result?;
        let n = bytes.len() as f64;
        Ok(json!({
            "streams": streams,
            "register_seconds": registered_s,
            "copy_seconds": copy_s,
            "gb_per_s": n / (registered_s + copy_s) / 1e9,
            "copy_gb_per_s": n / copy_s / 1e9,
            "path": "the mapping registered (cuMemHostRegister, read-only) and copied from directly, 64 MiB pieces",
        }))
    }

    fn pageable(bytes: &[u8], ordinal: usize) -> anyhow::Result<Value> {
        use candle_core::{Device, Tensor};
        let device = Device::new_cuda(ordinal)?;
        device.synchronize()?;
        let start = std::time::Instant::now();
        let mut resident = Vec::new();
        for piece in bytes.chunks(64 << 20) {
            resident.push(Tensor::from_slice(piece, piece.len(), &device)?);
        }
        device.synchronize()?;
        let seconds = start.elapsed().as_secs_f64();
        Ok(json!({
            "seconds": seconds,
            "gb_per_s": bytes.len() as f64 / seconds / 1e9,
            "pieces": resident.len(),
            "path": "candle Tensor::from_slice from the mapping (pageable), 64 MiB pieces",
        }))
    }

    /// The staged upload from `source` (the mapping `bytes`, or the file
    /// read into the slots), verified against `bytes`.
    fn pinned_upload(
        ctx: &std::sync::Arc<CudaContext>,
        source: super::plan::Source<'_>,
        bytes: &[u8],
        tensors: &[super::plan::TensorBytes],
        staging: super::plan::Staging,
        threads: usize,
    ) -> anyhow::Result<Value> {
        let (device, done) =
            super::pinned::upload(ctx, source, bytes.len(), tensors, staging, threads)?;
        let verified = super::pinned::verify(ctx, bytes, tensors, &device, 16);
        Ok(json!({
            "seconds": done.seconds,
            "gb_per_s": done.bytes as f64 / done.seconds / 1e9,
            "chunk_mib": staging.chunk_bytes >> 20,
            "slots": staging.slots,
            "streams": staging.streams,
            "threads": threads,
            "chunks": done.chunks,
            "device_copies": done.copies,
            "verified": verified.as_ref().map_or_else(|e| Value::String(e.clone()), |()| Value::Bool(true)),
            "path": match source {
                super::plan::Source::Mapped(_) => "mapping -> pinned staging (CPU threads) -> device (async, several streams, events)",
                super::plan::Source::File(_) => "file (pread) -> pinned staging (CPU threads) -> device (async, several streams, events)",
            },
        }))
    }
}

/// Weights mapped and registered with the driver (`cuMemHostRegister`,
/// read-only) while a model loads onto a GPU: candle copies each tensor
/// straight from the mapping, and from registered pages the copy runs at
/// the host-to-device ceiling (on an H200 55 GB/s, against 7.4 from plain
/// pageable memory; registration itself runs at 33–48 GB/s). Dropping it
/// unregisters the pages; the tensors already on the device stay.
#[cfg(feature = "cuda")]
pub struct Registered {
    /// Keeps the mapping alive until the pages are unregistered.
    _vb: candle_nn::VarBuilder<'static>,
    start: usize,
    /// Time the registration took.
    pub register_ms: f64,
}

#[cfg(feature = "cuda")]
#[allow(unsafe_code)] // the registration of the mapping's pages
impl Drop for Registered {
    fn drop(&mut self) {
        use candle_core::cuda_backend::cudarc::driver::sys;
        // SAFETY: `start` was registered by `map_registered` and the mapping
        // (held by `_vb`, dropped after this) is still there.
        let status = unsafe { sys::cuMemHostUnregister(self.start as *mut std::ffi::c_void) };
        if status != sys::cudaError_enum::CUDA_SUCCESS {
            tracing::warn!("unregistering a model's mapping: {status:?}");
        }
    }
}

/// Registers `len` bytes of host memory from `start` (page-aligned) with
/// the current context's driver, read-only; the time it took (ms).
///
/// # Safety
/// The range must be mapped and stay mapped until it is unregistered.
#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
unsafe fn register(start: usize, len: usize) -> Result<f64, String> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let began = std::time::Instant::now();
    // SAFETY: the caller's promise; read-only registration.
    let status = unsafe {
        sys::cuMemHostRegister_v2(
            start as *mut std::ffi::c_void,
            len,
            sys::CU_MEMHOSTREGISTER_READ_ONLY,
        )
    };
    if status != sys::cudaError_enum::CUDA_SUCCESS {
        return Err(format!("{status:?}"));
    }
    Ok(began.elapsed().as_secs_f64() * 1e3)
}

/// A whole file mapped and registered with the driver (a chat model's
/// GGUF, whose tensors candle copies straight from the mapping): copies
/// from it run at the host-to-device ceiling. Dropping it unregisters.
#[cfg(feature = "cuda")]
pub struct RegisteredFile {
    file: thaw_snapshot::mmap::MappedFile,
    /// Time the registration took.
    pub register_ms: f64,
}

#[cfg(feature = "cuda")]
#[allow(unsafe_code)] // the registration of the mapping's pages
impl RegisteredFile {
    /// Maps the file at `path` and registers all of it with `device`'s
    /// driver.
    pub fn open(path: &std::path::Path, device: &candle_core::Device) -> Result<Self, String> {
        let cuda = device.as_cuda_device().map_err(|e| e.to_string())?;
        cuda.cuda_stream()
            .context()
            .bind_to_thread()
            .map_err(|e| e.to_string())?;
        let file = thaw_snapshot::mmap::MappedFile::open(path).map_err(|e| e.to_string())?;
        let bytes = file.bytes();
        if bytes.is_empty() {
            return Err(format!("{} is empty", path.display()));
        }
        // SAFETY: the whole mapping (page-aligned by mmap), which `file`
        // keeps until the drop below unregisters it first.
        let register_ms = unsafe { register(bytes.as_ptr() as usize, bytes.len()) }
            .map_err(|status| format!("registering {}: {status}", path.display()))?;
        Ok(RegisteredFile { file, register_ms })
    }

    /// The mapped file.
    pub fn mapped(&self) -> &thaw_snapshot::mmap::MappedFile {
        &self.file
    }
}

#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
impl Drop for RegisteredFile {
    fn drop(&mut self) {
        use candle_core::cuda_backend::cudarc::driver::sys;
        // SAFETY: registered by `open`, and the mapping is still there
        // (`file` is dropped after this).
        let status = unsafe {
            sys::cuMemHostUnregister(self.file.bytes().as_ptr() as *mut std::ffi::c_void)
        };
        if status != sys::cudaError_enum::CUDA_SUCCESS {
            tracing::warn!("unregistering {}: {status:?}", self.file.path().display());
        }
    }
}

/// A `VarBuilder` over the safetensors file at `path` whose mapping is
/// registered with `device`'s driver (ahead, by [`preregister`], or now);
/// the guard unregisters it.
#[cfg(feature = "cuda")]
#[allow(unsafe_code)] // the mapping, and the registration of its pages
pub fn map_registered(
    path: &std::path::Path,
    dtype: candle_core::DType,
    device: &candle_core::Device,
) -> Result<(candle_nn::VarBuilder<'static>, Registered), String> {
    use candle_core::safetensors::MmapedSafetensors;
    if let Some(ahead) = take_ahead(path) {
        return Ok(ahead);
    }
    let cuda = device.as_cuda_device().map_err(|e| e.to_string())?;
    cuda.cuda_stream()
        .context()
        .bind_to_thread()
        .map_err(|e| e.to_string())?;
    // SAFETY: a read-only mapping of a model file, which thaw never
    // modifies in place while mapped (see `thaw_snapshot::mmap`).
    let mapped = unsafe { MmapedSafetensors::new(path) }.map_err(|e| e.to_string())?;
    let (start, end) = mapped
        .tensors()
        .iter()
        .map(|(_, view)| {
            let data = view.data();
            (data.as_ptr() as usize, data.as_ptr() as usize + data.len())
        })
        .fold((usize::MAX, 0), |(a, b), (c, d)| (a.min(c), b.max(d)));
    if start >= end {
        return Err(format!("{}: no tensor data to register", path.display()));
    }
    let start = start & !4095;
    // SAFETY: [start, end) lies inside the live mapping (page-rounded down
    // to its first page, which the mapping covers); it is unregistered by
    // `Registered`'s drop, before the mapping (kept alive by the guard's
    // VarBuilder) goes away.
    let register_ms = unsafe { register(start, end - start) }
        .map_err(|status| format!("registering {}: {status}", path.display()))?;
    let vb = candle_nn::VarBuilder::from_backend(Box::new(mapped), dtype, device.clone());
    Ok((
        vb.clone(),
        Registered {
            _vb: vb,
            start,
            register_ms,
        },
    ))
}

/// A safetensors file's tensors uploaded to `device` through pinned staging
/// buffers filled by reading the file (`pread`) on several threads and
/// copied on several streams (`gpu/pinned.rs`), each tensor in a device
/// allocation of its own, as candle's: the upload of a snapshot that was
/// not registered ahead (on an H200, staged copies reached 0.70x of the
/// copy ceiling from the mapping, where registering the mapping at load
/// and copying from it comes to 0.28-0.47x). The tensors, and a report.
#[cfg(feature = "cuda")]
#[allow(unsafe_code)] // the device addresses handed to the staged copies
pub fn staged_tensors(
    path: &std::path::Path,
    device: &candle_core::Device,
) -> Result<
    (
        std::collections::HashMap<String, candle_core::Tensor>,
        Value,
    ),
    String,
> {
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtr};
    use candle_core::{CudaStorage, Storage, Tensor};
    use safetensors::Dtype;

    enum Slice {
        F32(CudaSlice<f32>),
        F16(CudaSlice<half::f16>),
        Bf16(CudaSlice<half::bf16>),
        I64(CudaSlice<i64>),
        U32(CudaSlice<u32>),
        U8(CudaSlice<u8>),
    }
    let cuda = device.as_cuda_device().map_err(|e| e.to_string())?;
    let stream = cuda.cuda_stream();
    let ctx = stream.context().clone();
    let mapped = thaw_snapshot::mmap::MappedFile::open(path).map_err(|e| e.to_string())?;
    let bytes = mapped.bytes();
    let header = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut views = header.tensors();
    views.sort_by_key(|(_, v)| v.data().as_ptr() as usize);
    let mut tensors = Vec::new();
    let mut slices = Vec::new();
    let mut empty = std::collections::HashMap::new();
    for (name, view) in views {
        let n: usize = view.shape().iter().product();
        let shape = view.shape().to_vec();
        if n == 0 {
            let dtype = match view.dtype() {
                Dtype::F16 => candle_core::DType::F16,
                Dtype::BF16 => candle_core::DType::BF16,
                _ => candle_core::DType::F32,
            };
            let t = Tensor::zeros(shape, dtype, device).map_err(|e| e.to_string())?;
            empty.insert(name, t);
            continue;
        }
        let alloc = |e: candle_core::cuda_backend::cudarc::driver::DriverError| e.to_string();
        let slice = match view.dtype() {
            Dtype::F32 => Slice::F32(stream.alloc_zeros::<f32>(n).map_err(alloc)?),
            Dtype::F16 => Slice::F16(stream.alloc_zeros::<half::f16>(n).map_err(alloc)?),
            Dtype::BF16 => Slice::Bf16(stream.alloc_zeros::<half::bf16>(n).map_err(alloc)?),
            Dtype::I64 => Slice::I64(stream.alloc_zeros::<i64>(n).map_err(alloc)?),
            Dtype::U32 => Slice::U32(stream.alloc_zeros::<u32>(n).map_err(alloc)?),
            Dtype::U8 => Slice::U8(stream.alloc_zeros::<u8>(n).map_err(alloc)?),
            other => return Err(format!("{name}: {other:?} tensors are not staged")),
        };
        let address = match &slice {
            Slice::F32(s) => s.device_ptr(&stream).0,
            Slice::F16(s) => s.device_ptr(&stream).0,
            Slice::Bf16(s) => s.device_ptr(&stream).0,
            Slice::I64(s) => s.device_ptr(&stream).0,
            Slice::U32(s) => s.device_ptr(&stream).0,
            Slice::U8(s) => s.device_ptr(&stream).0,
        };
        let start = (view.data().as_ptr() as usize - bytes.as_ptr() as usize) as u64;
        tensors.push(plan::TensorBytes {
            name: name.clone(),
            range: start..start + view.data().len() as u64,
        });
        slices.push((name, shape, slice, address));
    }
    // The allocations' zeroing ran on candle's stream; the copies run on
    // others.
    stream.synchronize().map_err(|e| e.to_string())?;
    let total: u64 = tensors.iter().map(|t| t.range.end - t.range.start).sum();
    let chunk: u64 = 4 << 20;
    let staging = plan::Staging {
        chunk_bytes: chunk,
        slots: usize::try_from(total.div_ceil(chunk))
            .unwrap_or(64)
            .clamp(1, 64),
        streams: 4,
    };
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get().min(12));
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let destinations: Vec<u64> = slices.iter().map(|s| s.3).collect();
    let done = pinned::upload_to(
        &ctx,
        plan::Source::File(&file),
        bytes.len(),
        &tensors,
        pinned::Destinations {
            addresses: &destinations,
            one_allocation: false,
        },
        staging,
        threads,
    )
    .map_err(|e| e.to_string())?;
    let mut out = empty;
    for (name, shape, slice, _) in slices {
        let storage = match slice {
            Slice::F32(s) => CudaStorage::wrap_cuda_slice(s, cuda.clone()),
            Slice::F16(s) => CudaStorage::wrap_cuda_slice(s, cuda.clone()),
            Slice::Bf16(s) => CudaStorage::wrap_cuda_slice(s, cuda.clone()),
            Slice::I64(s) => CudaStorage::wrap_cuda_slice(s, cuda.clone()),
            Slice::U32(s) => CudaStorage::wrap_cuda_slice(s, cuda.clone()),
            Slice::U8(s) => CudaStorage::wrap_cuda_slice(s, cuda.clone()),
        };
        out.insert(name, Tensor::from((Storage::Cuda(storage), shape)));
    }
    let report = serde_json::json!({
        "bytes": done.bytes,
        "seconds": done.seconds,
        "gb_per_s": done.bytes as f64 / done.seconds / 1e9,
        "threads": threads,
    });
    Ok((out, report))
}

/// The weights file at `path` for a model loading onto GPU `device`, as a
/// `VarBuilder`, by the fastest way at hand: the registration a standby
/// process made ahead (copies at the ceiling), else the staged upload
/// ([`staged_tensors`]), else the mapping registered now; `None` if all of
/// them fail (the caller copies from plain pages). The guard, when there
/// is one, unregisters the mapping once dropped.
#[cfg(feature = "cuda")]
pub fn gpu_weights(
    path: &std::path::Path,
    device: &candle_core::Device,
) -> Option<(candle_nn::VarBuilder<'static>, Option<Registered>)> {
    use candle_core::DType;
    if let Some((vb, guard)) = take_ahead(path) {
        tracing::info!(path = %path.display(), "weights registered ahead");
        return Some((vb, Some(guard)));
    }
    match staged_tensors(path, device) {
        Ok((tensors, report)) => {
            tracing::info!(path = %path.display(), %report, "weights uploaded through pinned staging");
            return Some((
                candle_nn::VarBuilder::from_tensors(tensors, DType::F32, device),
                None,
            ));
        }
        Err(e) => tracing::warn!("no staged upload ({e}): registering the mapping instead"),
    }
    match map_registered(path, DType::F32, device) {
        Ok((vb, guard)) => Some((vb, Some(guard))),
        Err(e) => {
            tracing::warn!("loading without registered pages: {e}");
            None
        }
    }
}

/// Snapshots registered ahead by a standby process (`--preregister`), for
/// the model it will be activated with: that model's load then copies at
/// the host-to-device ceiling with no registration on its path.
#[cfg(feature = "cuda")]
enum Ahead {
    /// A safetensors file, as its `VarBuilder`.
    Weights(candle_nn::VarBuilder<'static>, Registered),
    /// A whole file (a GGUF).
    File(RegisteredFile),
}

#[cfg(feature = "cuda")]
static AHEAD: std::sync::Mutex<Vec<(std::path::PathBuf, Ahead)>> =
    std::sync::Mutex::new(Vec::new());

/// Maps and registers the weights file at `path` (safetensors, or a whole
/// GGUF) with `device`'s driver ahead of an activation, and keeps it for
/// the load ([`map_registered`], [`take_ahead_file`]). The report
/// says what it cost, or why it was not done (a CPU device, a build without
/// CUDA, a file the driver refuses): a standby process works either way.
pub fn preregister(path: &std::path::Path, device: &candle_core::Device) -> serde_json::Value {
    let bytes = std::fs::metadata(path).map(|m| m.len()).ok();
    let mut report = serde_json::json!({"path": path, "bytes": bytes, "registered": false});
    let reason: String = 'done: {
        if bytes.is_none() {
            break 'done format!("{} cannot be read", path.display());
        }
        #[cfg(feature = "cuda")]
        {
            if !device.is_cuda() {
                break 'done "not a CUDA device: nothing to register".into();
            }
            let ahead = if path.extension().is_some_and(|x| x == "gguf") {
                RegisteredFile::open(path, device).map(|f| (f.register_ms, Ahead::File(f)))
            } else {
                map_registered(path, candle_core::DType::F32, device)
                    .map(|(vb, guard)| (guard.register_ms, Ahead::Weights(vb, guard)))
            };
            match ahead {
                Ok((register_ms, ahead)) => {
                    report["registered"] = true.into();
                    report["register_ms"] = register_ms.into();
                    let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
                    AHEAD
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((key, ahead));
                    return report;
                }
                Err(e) => break 'done e,
            }
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = device;
            "this build has no CUDA (the cuda feature): nothing to register".into()
        }
    };
    report["reason"] = reason.into();
    report
}

/// The registration made ahead for `path`, taken (each is used once).
#[cfg(feature = "cuda")]
fn take(path: &std::path::Path) -> Option<Ahead> {
    let key = path.canonicalize().ok()?;
    let mut ahead = AHEAD.lock().unwrap_or_else(|p| p.into_inner());
    let at = ahead.iter().position(|(p, _)| *p == key)?;
    Some(ahead.swap_remove(at).1)
}

/// The safetensors file at `path` registered ahead, taken.
#[cfg(feature = "cuda")]
fn take_ahead(path: &std::path::Path) -> Option<(candle_nn::VarBuilder<'static>, Registered)> {
    match take(path)? {
        Ahead::Weights(vb, guard) => Some((vb, guard)),
        Ahead::File(_) => None,
    }
}

/// The whole file at `path` (a GGUF) registered ahead, taken.
#[cfg(feature = "cuda")]
pub fn take_ahead_file(path: &std::path::Path) -> Option<RegisteredFile> {
    match take(path)? {
        Ahead::File(file) => Some(file),
        Ahead::Weights(..) => None,
    }
}

/// Unregisters what was registered ahead and not used (after an
/// activation: the worker serves one model).
pub fn release_preregistered() {
    #[cfg(feature = "cuda")]
    AHEAD.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(not(feature = "cuda"))]
    use serde_json::json;

    #[test]
    fn uuids_are_written_as_nvidia_smi_does() {
        let bytes: [u8; 16] = std::array::from_fn(|i| (i * 17) as u8);
        assert_eq!(
            format_uuid(&bytes),
            "GPU-00112233-4455-6677-8899-aabbccddeeff"
        );
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_build_without_cuda_says_so() {
        let v = inventory();
        assert_eq!(v["cuda"], false);
        assert_eq!(v["gpus"], json!([]));
        assert!(v["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cuda feature")));
        assert_eq!(v["hibernation"]["supported"], false);
        assert!(v["hibernation"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cuda feature")));
    }
}
