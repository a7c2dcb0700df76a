//! Whether this machine's driver can hibernate a GPU process: the CUDA
//! driver's checkpoint API (`cuCheckpointProcessLock`, `…Checkpoint`,
//! `…Restore`, `…Unlock`, driver 570 and later on Linux) moves a process's
//! device memory to the host and frees its GPU, then back. Detected, not
//! used yet: the four entry points are looked up in the loaded driver
//! library (cudarc has no bindings for them), and the state of this
//! process is asked for, which fails where the driver refuses the API.

use std::ffi::c_int;

use serde_json::{json, Value};

/// The entry points a hibernation needs, in the order it calls them.
const ENTRY_POINTS: [&str; 4] = [
    "cuCheckpointProcessLock",
    "cuCheckpointProcessCheckpoint",
    "cuCheckpointProcessRestore",
    "cuCheckpointProcessUnlock",
];

/// `CUresult cuCheckpointProcessGetState(int pid, CUprocessState *state)`.
type GetState = unsafe extern "C" fn(c_int, *mut c_int) -> c_int;

/// `{"supported": bool, "reason": …}` (the reason when it is not, or the
/// process's checkpoint state when it is). Call after a CUDA context
/// exists in this process (the state is asked of this process).
pub fn detect() -> Value {
    match probe() {
        Ok(state) => json!({"supported": true, "state_of_this_process": state}),
        Err(reason) => json!({"supported": false, "reason": reason}),
    }
}

fn probe() -> Result<&'static str, String> {
    // SAFETY: loading the CUDA driver library runs its initialisers, which
    // this process has already run (it is linked against it and has
    // created a context); this only takes another reference to it.
    let lib = unsafe { libloading::Library::new("libcuda.so.1") }
        .map_err(|e| format!("cannot open libcuda.so.1: {e}"))?;
    let missing: Vec<&str> = ENTRY_POINTS
        .iter()
        .copied()
        // SAFETY: only the symbols' presence is checked; the pointer is
        // not called (nor kept) with this type.
        .filter(|name| unsafe { lib.get::<unsafe extern "C" fn()>(name.as_bytes()) }.is_err())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the driver has no {} (the checkpoint API needs driver 570 or later)",
            missing.join(", ")
        ));
    }
    // SAFETY: the declared type is cuda.h's prototype of this function.
    let get_state = unsafe { lib.get::<GetState>(b"cuCheckpointProcessGetState") }
        .map_err(|e| format!("the driver has no cuCheckpointProcessGetState: {e}"))?;
    let mut state: c_int = -1;
    // SAFETY: the function writes one int through a pointer to a live local.
    let result = unsafe { get_state(std::process::id() as c_int, &mut state) };
    if result != 0 {
        return Err(format!(
            "cuCheckpointProcessGetState refused this process (CUresult {result})"
        ));
    }
    Ok(match state {
        0 => "running",
        1 => "locked",
        2 => "checkpointed",
        3 => "failed",
        _ => "unknown",
    })
}
