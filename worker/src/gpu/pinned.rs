//! The pinned, chunked, overlapped upload (cuda builds): runs a
//! [`plan`](super::plan) with page-locked staging buffers. CPU threads stage
//! chunks from the source (the mapping, or the file read straight into the
//! slot) into the staging slots while the GPU copies
//! earlier chunks out of theirs on several streams; an event recorded after
//! each chunk's device copies tells the thread that owns the slot when it
//! may fill it again.
//!
//! The unsafe here: the asynchronous host-to-device copy (the driver reads
//! the staging buffer after the call returns) and the device pointer
//! arithmetic into one allocation.

use std::sync::Arc;
use std::time::Instant;

use candle_core::cuda_backend::cudarc::driver::{
    result, sys, CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr, DriverError,
    PinnedHostSlice,
};

use super::plan::{self, Chunk, Source, Staging, TensorBytes};

/// What an upload did.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// Bytes copied to the device.
    pub bytes: u64,
    /// From the first staging copy to the last device copy's end.
    pub seconds: f64,
    /// Chunks in the plan.
    pub chunks: usize,
    /// Device copies issued (after merging contiguous pieces).
    pub copies: usize,
}

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The plan was refused.
    #[error("upload plan: {0}")]
    Plan(#[from] plan::PlanError),
    /// A tensor lies outside the mapping.
    #[error("tensor {0:?} ends past the mapping ({1} bytes)")]
    OutOfRange(String, usize),
    /// The driver failed.
    #[error("CUDA: {0}")]
    Driver(#[from] DriverError),
    /// Staging from the source failed.
    #[error("staging: {0}")]
    Stage(#[from] std::io::Error),
    /// Not one destination per tensor.
    #[error("{0} destinations for {1} tensors")]
    Destinations(usize, usize),
    /// A staging thread panicked.
    #[error("a staging thread panicked")]
    Thread,
}

/// The device memory the tensors were uploaded into: tensor `t` starts at
/// `bases[t]`.
pub struct DeviceTensors {
    /// One allocation holding every tensor, back to back.
    pub memory: CudaSlice<u8>,
    /// Each tensor's offset in it.
    pub bases: Vec<u64>,
}

/// Uploads `tensors` of a file of `len` bytes to `ctx`'s device, into one
/// allocation (tensor after tensor), under `staging`, filling staging
/// buffers from `source` on `threads` CPU threads.
pub fn upload(
    ctx: &Arc<CudaContext>,
    source: Source<'_>,
    len: usize,
    tensors: &[TensorBytes],
    staging: Staging,
    threads: usize,
) -> Result<(DeviceTensors, Uploaded), UploadError> {
    let mut bases = Vec::with_capacity(tensors.len());
    let mut total = 0u64;
    for t in tensors {
        bases.push(total);
        total += t.range.end - t.range.start;
    }
    let setup = ctx.default_stream();
    let memory = setup.alloc_zeros::<u8>(usize::try_from(total.max(1)).unwrap_or(usize::MAX))?;
    setup.synchronize()?;
    let base = {
        let (ptr, _record) = memory.device_ptr(&setup);
        ptr
    };
    let destinations: Vec<sys::CUdeviceptr> = bases.iter().map(|b| base + b).collect();
    let uploaded = upload_to(
        ctx,
        source,
        len,
        tensors,
        Destinations {
            addresses: &destinations,
            one_allocation: true,
        },
        staging,
        threads,
    )?;
    Ok((DeviceTensors { memory, bases }, uploaded))
}

/// Where each tensor goes on the device.
#[derive(Debug, Clone, Copy)]
pub struct Destinations<'a> {
    /// Tensor `t`'s device address: memory the caller allocated, at least
    /// the tensor's length there, no copy into it pending.
    pub addresses: &'a [sys::CUdeviceptr],
    /// Whether they all lie in one allocation: then copies contiguous on
    /// both sides may merge (never across allocations of their own).
    pub one_allocation: bool,
}

/// Uploads `tensors` of a file of `len` bytes to `ctx`'s device, to
/// `destinations`, under `staging`, filling staging buffers from `source`
/// on `threads` CPU threads. Returns once every copy has finished.
pub fn upload_to(
    ctx: &Arc<CudaContext>,
    source: Source<'_>,
    len: usize,
    tensors: &[TensorBytes],
    destinations: Destinations<'_>,
    staging: Staging,
    threads: usize,
) -> Result<Uploaded, UploadError> {
    if let Some(t) = tensors.iter().find(|t| t.range.end > len as u64) {
        return Err(UploadError::OutOfRange(t.name.clone(), len));
    }
    if destinations.addresses.len() != tensors.len() {
        return Err(UploadError::Destinations(
            destinations.addresses.len(),
            tensors.len(),
        ));
    }
    let chunks = plan::plan(tensors, staging)?;
    let total: u64 = tensors.iter().map(|t| t.range.end - t.range.start).sum();
    let streams: Vec<Arc<CudaStream>> = (0..staging.streams)
        .map(|_| ctx.new_stream())
        .collect::<Result<_, _>>()?;
    let chunk_len = usize::try_from(staging.chunk_bytes).unwrap_or(usize::MAX);
    let slots: Vec<PinnedHostSlice<u8>> = (0..staging.slots)
        // SAFETY: the buffers are uninitialised; every byte a device copy
        // reads from one was written by its fill first (the plan stages a
        // chunk's pieces back to back from offset 0 and copies only those).
        .map(|_| unsafe { ctx.alloc_pinned::<u8>(chunk_len) })
        .collect::<Result<_, _>>()?;
    let threads = threads.clamp(1, staging.slots);
    // Slot s belongs to thread s % threads, with every chunk staged in it.
    let mut owned: Vec<Vec<(usize, PinnedHostSlice<u8>)>> =
        (0..threads).map(|_| Vec::new()).collect();
    for (s, slot) in slots.into_iter().enumerate() {
        owned[s % threads].push((s, slot));
    }
    let job = Job {
        source,
        chunks: &chunks,
        bases: destinations.addresses,
        merge: destinations.one_allocation,
        streams: &streams,
        threads,
    };
    let start = Instant::now();
    let copies: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = owned
            .into_iter()
            .enumerate()
            .map(|(t, slots)| {
                let job = &job;
                scope.spawn(move || job.run(ctx, t, slots))
            })
            .collect();
        let mut copies = 0;
        for w in workers {
            copies += w.join().map_err(|_| UploadError::Thread)??;
        }
        Ok::<usize, UploadError>(copies)
    })?;
    for s in &streams {
        s.synchronize()?;
    }
    Ok(Uploaded {
        bytes: total,
        seconds: start.elapsed().as_secs_f64(),
        chunks: chunks.len(),
        copies,
    })
}

/// What every staging thread shares.
struct Job<'a> {
    source: Source<'a>,
    chunks: &'a [Chunk],
    /// Each tensor's device address.
    bases: &'a [sys::CUdeviceptr],
    /// Whether copies contiguous on both sides may merge (one allocation).
    merge: bool,
    streams: &'a [Arc<CudaStream>],
    threads: usize,
}

impl Job<'_> {
    /// Stages and issues every chunk of the slots this thread owns, in
    /// plan order; returns the device copies issued. Returns only once its
    /// last copies have finished (so the slots may be freed).
    fn run(
        &self,
        ctx: &Arc<CudaContext>,
        thread: usize,
        mut slots: Vec<(usize, PinnedHostSlice<u8>)>,
    ) -> Result<usize, UploadError> {
        ctx.bind_to_thread()?;
        let mut last: Vec<Option<CudaEvent>> = (0..slots.len()).map(|_| None).collect();
        let mut copies = 0;
        for chunk in self
            .chunks
            .iter()
            .filter(|c| c.slot % self.threads == thread)
        {
            let k = slots
                .iter()
                .position(|(s, _)| *s == chunk.slot)
                .ok_or(UploadError::Thread)?;
            // The plan's dependency: the chunk that used this slot before
            // has been copied out of it.
            if let Some(done) = last[k].take() {
                done.synchronize()?;
            }
            let staging = slots[k].1.as_mut_slice()?;
            self.source.stage(chunk, staging)?;
            let stream = &self.streams[chunk.stream];
            for (at, device, len) in chunk.device_copies(self.bases, self.merge) {
                let (at, len) = (at as usize, len as usize);
                // SAFETY: the destination lies inside the tensor's device
                // memory (its address plus an offset within its length, as
                // `upload_to`'s caller promises), which outlives the copy
                // (`upload_to` synchronises every stream before returning).
                // The source is this thread's pinned slot, which is written
                // again only after the event recorded below has completed,
                // and freed only after this thread waited for its last
                // event.
                unsafe {
                    result::memcpy_htod_async(device, &staging[at..at + len], stream.cu_stream())?;
                }
                copies += 1;
            }
            let event = ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING))?;
            event.record(stream)?;
            last[k] = Some(event);
        }
        for done in last.into_iter().flatten() {
            done.synchronize()?;
        }
        Ok(copies)
    }
}

/// Checks `samples` windows of the upload against the mapping (copied
/// back to the host): `Ok(())` when every byte matches.
pub fn verify(
    ctx: &Arc<CudaContext>,
    bytes: &[u8],
    tensors: &[TensorBytes],
    device: &DeviceTensors,
    samples: usize,
) -> Result<(), String> {
    let stream = ctx.default_stream();
    let window = 4096u64;
    for (t, tensor) in tensors.iter().enumerate() {
        let len = tensor.range.end - tensor.range.start;
        if len == 0 {
            continue;
        }
        for i in 0..samples as u64 {
            // Spread over the tensor, its last bytes included.
            let at = (len.saturating_sub(window)) * i / (samples as u64 - 1).max(1);
            let n = window.min(len - at);
            let base = device.bases[t] + at;
            let view = device.memory.slice(base as usize..(base + n) as usize);
            let back = stream.clone_dtoh(&view).map_err(|e| e.to_string())?;
            let from = (tensor.range.start + at) as usize;
            if back[..] != bytes[from..from + n as usize] {
                return Err(format!(
                    "tensor {:?} differs on the device at offset {at}",
                    tensor.name
                ));
            }
        }
    }
    Ok(())
}
