//! Hibernation of a GPU worker through the driver's process checkpoint API
//! (`cuCheckpointProcess*`, drivers from 570 / CUDA 12.8 on): an idle hot
//! worker is locked (its CUDA calls block) and checkpointed (the driver
//! moves its device memory to host memory and releases the GPU); resuming
//! restores the memory at PCIe speed and unlocks it. The process itself
//! never notices: this runs from another process on its pid
//! (`thaw-worker --hibernate PID`, `--resume PID`), as NVIDIA's
//! `cuda-checkpoint` does.
//!
//! The entry points are looked up in the driver library at run time, so a
//! driver without them is an error that says so (`--gpu-info` reports
//! whether they are there: [`detect`]).
//!
//! Test hook: with `THAW_FAKE_HIBERNATE` set, hibernating stops the
//! process (SIGSTOP) and resuming continues it (SIGCONT), so that the
//! gateway's hibernation tier is tested on machines without a GPU (with
//! `THAW_FAKE_GPUS`); the reports then say `"fake": true`.

use serde_json::{json, Value};

/// The test hook's variable (see the module's documentation).
pub const FAKE_HIBERNATE_ENV: &str = "THAW_FAKE_HIBERNATE";

/// The test hook: SIGSTOP or SIGCONT instead of the driver.
fn fake(pid: u32, stop: bool) -> Option<Value> {
    std::env::var_os(FAKE_HIBERNATE_ENV)?;
    let signal = if stop {
        nix::sys::signal::Signal::SIGSTOP
    } else {
        nix::sys::signal::Signal::SIGCONT
    };
    let Ok(raw) = i32::try_from(pid) else {
        return Some(json!({"error": format!("{pid} is not a pid")}));
    };
    Some(
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), signal) {
            Ok(()) => json!({
                "fake": true,
                "state": if stop { "checkpointed" } else { "running" },
            }),
            Err(e) => json!({"error": format!("signalling {pid}: {e}")}),
        },
    )
}

/// Locks the CUDA process `pid` (waiting up to `lock_timeout_ms` for its
/// calls in flight) and checkpoints it: its device memory goes to host
/// memory. Timings (ms) and the state it is left in, or the error.
pub fn hibernate(pid: u32, lock_timeout_ms: u32) -> Value {
    if let Some(faked) = fake(pid, true) {
        return faked;
    }
    #[cfg(feature = "cuda")]
    {
        cuda::hibernate(pid, lock_timeout_ms).unwrap_or_else(|e| json!({"error": e}))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (pid, lock_timeout_ms);
        unsupported()
    }
}

/// Whether this machine's driver can hibernate a GPU process:
/// `{"supported": true, "state_of_this_process": …}`, or `{"supported":
/// false, "reason": …}`. The entry points are looked up and the driver is
/// asked for this process's state, which fails where it refuses the API;
/// call it once this process has a CUDA context.
#[cfg(feature = "cuda")]
pub fn detect() -> Value {
    match cuda::state_of_this_process() {
        Ok(state) => json!({"supported": true, "state_of_this_process": state}),
        Err(reason) => json!({"supported": false, "reason": reason}),
    }
}

/// Restores a hibernated process `pid` and unlocks it.
pub fn resume(pid: u32) -> Value {
    if let Some(faked) = fake(pid, false) {
        return faked;
    }
    #[cfg(feature = "cuda")]
    {
        cuda::resume(pid).unwrap_or_else(|e| json!({"error": e}))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = pid;
        unsupported()
    }
}

#[cfg(not(feature = "cuda"))]
fn unsupported() -> Value {
    json!({"error": "this worker is built without the cuda feature: nothing to hibernate"})
}

/// The driver's name for a process state.
pub fn state_name(state: i32) -> &'static str {
    match state {
        0 => "running",
        1 => "locked",
        2 => "checkpointed",
        3 => "failed",
        _ => "unknown",
    }
}

#[cfg(feature = "cuda")]
#[allow(unsafe_code)] // calls into the driver library through looked-up pointers
mod cuda {
    use std::ffi::{c_int, c_uint};
    use std::time::Instant;

    use serde_json::{json, Value};

    /// `CUcheckpointLockArgs`: a timeout, then reserved zeros.
    #[repr(C)]
    struct LockArgs {
        timeout_ms: c_uint,
        reserved0: c_uint,
        reserved1: [u64; 7],
    }

    /// The other argument structs are 64 reserved bytes that must be zero
    /// (`CUcheckpointRestoreArgs` too, when no GPU is remapped: a null
    /// pointer, a zero count and zeros).
    #[repr(C)]
    struct ZeroArgs {
        reserved: [u64; 8],
    }

    type Init = unsafe extern "C" fn(c_uint) -> c_int;
    type GetState = unsafe extern "C" fn(c_int, *mut c_int) -> c_int;
    type Lock = unsafe extern "C" fn(c_int, *mut LockArgs) -> c_int;
    type Op = unsafe extern "C" fn(c_int, *mut ZeroArgs) -> c_int;

    /// The checkpoint entry points of the loaded driver.
    pub(super) struct Api {
        /// Keeps the functions below loaded.
        _lib: libloading::Library,
        get_state: GetState,
        lock: Lock,
        checkpoint: Op,
        restore: Op,
        unlock: Op,
    }

    /// `name`'s address in the driver library, as the function type `T`.
    ///
    /// SAFETY (for callers): `T` must be the C prototype of `name` in
    /// cuda.h.
    unsafe fn symbol<T: Copy>(lib: &libloading::Library, name: &str) -> Result<T, String> {
        // SAFETY: the caller vouches for the type; the pointer is copied out
        // and used only while `lib` (kept in `Api`) is loaded.
        unsafe { lib.get::<T>(name.as_bytes()) }
            .map(|f| *f)
            .map_err(|_| {
                format!("the CUDA driver has no {name} (process checkpointing needs driver 570 or newer)")
            })
    }

    impl Api {
        pub(super) fn load() -> Result<Api, String> {
            // SAFETY: the driver library's initialisers are safe to run
            // (a CUDA program runs them at start); it stays loaded in `Api`.
            let lib = unsafe { libloading::Library::new("libcuda.so.1") }
                .map_err(|e| format!("cannot open the CUDA driver (libcuda.so.1): {e}"))?;
            // SAFETY: every type below is cuda.h's prototype of the name.
            unsafe {
                let init: Init = symbol(&lib, "cuInit")?;
                let status = init(0);
                if status != 0 {
                    return Err(format!("cuInit failed with CUDA error {status}"));
                }
                Ok(Api {
                    get_state: symbol(&lib, "cuCheckpointProcessGetState")?,
                    lock: symbol(&lib, "cuCheckpointProcessLock")?,
                    checkpoint: symbol(&lib, "cuCheckpointProcessCheckpoint")?,
                    restore: symbol(&lib, "cuCheckpointProcessRestore")?,
                    unlock: symbol(&lib, "cuCheckpointProcessUnlock")?,
                    _lib: lib,
                })
            }
        }

        fn state(&self, pid: c_int) -> Result<i32, String> {
            let mut state: c_int = -1;
            // SAFETY: the driver writes one int through a pointer to a live
            // local.
            check("cuCheckpointProcessGetState", unsafe {
                (self.get_state)(pid, &mut state)
            })?;
            Ok(state)
        }

        fn op(&self, name: &str, f: Op, pid: c_int) -> Result<f64, String> {
            let mut args = ZeroArgs { reserved: [0; 8] };
            let start = Instant::now();
            // SAFETY: zeroed arguments of the size the driver reads.
            check(name, unsafe { f(pid, &mut args) })?;
            Ok(start.elapsed().as_secs_f64() * 1e3)
        }
    }

    fn check(what: &str, status: c_int) -> Result<(), String> {
        match status {
            0 => Ok(()),
            e => Err(format!("{what} failed with CUDA error {e}")),
        }
    }

    fn pid_of(pid: u32) -> Result<c_int, String> {
        c_int::try_from(pid).map_err(|_| format!("{pid} is not a pid"))
    }

    pub(super) fn state_of_this_process() -> Result<&'static str, String> {
        let api = Api::load()?;
        let state = api.state(pid_of(std::process::id())?)?;
        Ok(super::state_name(state))
    }

    pub(super) fn hibernate(pid: u32, lock_timeout_ms: u32) -> Result<Value, String> {
        let api = Api::load()?;
        let pid = pid_of(pid)?;
        let mut args = LockArgs {
            timeout_ms: lock_timeout_ms,
            reserved0: 0,
            reserved1: [0; 7],
        };
        let start = Instant::now();
        // SAFETY: lock arguments as cuda.h lays them out, reserved zeros.
        check("cuCheckpointProcessLock", unsafe {
            (api.lock)(pid, &mut args)
        })?;
        let lock_ms = start.elapsed().as_secs_f64() * 1e3;
        let checkpoint_ms = match api.op("cuCheckpointProcessCheckpoint", api.checkpoint, pid) {
            Ok(ms) => ms,
            Err(e) => {
                // Leave it running rather than locked forever.
                let _ = api.op("cuCheckpointProcessUnlock", api.unlock, pid);
                return Err(e);
            }
        };
        Ok(json!({
            "lock_ms": lock_ms,
            "checkpoint_ms": checkpoint_ms,
            "state": super::state_name(api.state(pid)?),
        }))
    }

    pub(super) fn resume(pid: u32) -> Result<Value, String> {
        let api = Api::load()?;
        let pid = pid_of(pid)?;
        let restore_ms = api.op("cuCheckpointProcessRestore", api.restore, pid)?;
        let unlock_ms = api.op("cuCheckpointProcessUnlock", api.unlock, pid)?;
        Ok(json!({
            "restore_ms": restore_ms,
            "unlock_ms": unlock_ms,
            "state": super::state_name(api.state(pid)?),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_have_the_drivers_names() {
        assert_eq!(state_name(0), "running");
        assert_eq!(state_name(2), "checkpointed");
        assert_eq!(state_name(9), "unknown");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_build_without_cuda_says_it_cannot_hibernate() {
        assert!(hibernate(1, 100)["error"].is_string());
        assert!(resume(1)["error"].is_string());
    }
}
