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
//! driver without them is reported (`support`) instead of failing to load.

use serde_json::{json, Value};

/// Whether this build and driver can hibernate GPU workers:
/// `{"supported": bool, "reason": …}`.
pub fn support() -> Value {
    #[cfg(feature = "cuda")]
    {
        match cuda::Api::load() {
            Ok(_) => json!({"supported": true}),
            Err(reason) => json!({"supported": false, "reason": reason}),
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        json!({
            "supported": false,
            "reason": "this worker is built without the cuda feature",
        })
    }
}

/// Locks the CUDA process `pid` (waiting up to `lock_timeout_ms` for its
/// calls in flight) and checkpoints it: its device memory goes to host
/// memory. Timings (ms) and the state it is left in, or the error.
pub fn hibernate(pid: u32, lock_timeout_ms: u32) -> Value {
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

/// Restores a hibernated process `pid` and unlocks it.
pub fn resume(pid: u32) -> Value {
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
#[allow(unsafe_code)] // calls into the driver library through dlsym'd pointers
mod cuda {
    use std::ffi::{c_int, c_uint, c_void, CStr};
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
        get_state: GetState,
        lock: Lock,
        checkpoint: Op,
        restore: Op,
        unlock: Op,
    }

    fn symbol(lib: *mut c_void, name: &CStr) -> Result<*mut c_void, String> {
        // SAFETY: `lib` is a handle dlopen returned and never closed;
        // `name` is NUL-terminated.
        let f = unsafe { libc::dlsym(lib, name.as_ptr()) };
        if f.is_null() {
            return Err(format!(
                "the CUDA driver has no {} (process checkpointing needs driver 570 or newer)",
                name.to_string_lossy()
            ));
        }
        Ok(f)
    }

    impl Api {
        pub(super) fn load() -> Result<Api, String> {
            // SAFETY: a NUL-terminated library name; the handle is kept for
            // the process's life (the driver is never unloaded).
            let lib = unsafe {
                libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL)
            };
            if lib.is_null() {
                return Err("no CUDA driver library (libcuda.so.1) on this machine".into());
            }
            let init = symbol(lib, c"cuInit")?;
            // SAFETY: each pointer is the driver's function of that name,
            // whose C signature the type spells (cuda.h, CUDA 12.8+).
            let api = unsafe {
                let init: Init = std::mem::transmute::<*mut c_void, Init>(init);
                let status = init(0);
                if status != 0 {
                    return Err(format!("cuInit failed with CUDA error {status}"));
                }
                Api {
                    get_state: std::mem::transmute::<*mut c_void, GetState>(symbol(
                        lib,
                        c"cuCheckpointProcessGetState",
                    )?),
                    lock: std::mem::transmute::<*mut c_void, Lock>(symbol(
                        lib,
                        c"cuCheckpointProcessLock",
                    )?),
                    checkpoint: std::mem::transmute::<*mut c_void, Op>(symbol(
                        lib,
                        c"cuCheckpointProcessCheckpoint",
                    )?),
                    restore: std::mem::transmute::<*mut c_void, Op>(symbol(
                        lib,
                        c"cuCheckpointProcessRestore",
                    )?),
                    unlock: std::mem::transmute::<*mut c_void, Op>(symbol(
                        lib,
                        c"cuCheckpointProcessUnlock",
                    )?),
                }
            };
            Ok(api)
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
        let s = support();
        assert_eq!(s["supported"], false);
        assert!(s["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cuda feature")));
        assert!(hibernate(1, 100)["error"].is_string());
        assert!(resume(1)["error"].is_string());
    }
}
