//! thaw-snapshot: the lowest crate of thaw. It knows what a model directory
//! holds (which kind of model, where its files are) and maps weights into
//! memory; the snapshot format and the template fork server grow here.

pub mod kind;
pub mod mmap;

pub use kind::{detect_kind, KindError, ModelKind};
pub use mmap::{map_safetensors, MapError};
