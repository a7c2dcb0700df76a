//! Model backends behind one loading entry point: a model directory in, a
//! ready-to-serve model out (weights mapped, tokenizer loaded, warmed up).

pub mod bert;
pub mod chat;
pub mod embedding;
pub mod tabular;

use std::path::{Path, PathBuf};

use candle_core::Device;
use thaw_snapshot::ModelKind;

pub use embedding::{EmbeddingModel, Pooling};
pub use tabular::TabularModel;

/// Errors of a model backend, tagged by phase: loading fails the worker's
/// start; inference fails one batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelError {
    /// The model could not be loaded from its directory.
    #[error("loading the model: {0}")]
    Load(String),
    /// A forward pass failed.
    #[error("inference failed: {0}")]
    Inference(String),
    /// The executor thread has stopped (the worker is shutting down).
    #[error("the model executor has stopped")]
    Stopped,
}

impl ModelError {
    pub(crate) fn load(what: impl std::fmt::Display) -> Self {
        ModelError::Load(what.to_string())
    }
}

impl From<candle_core::Error> for ModelError {
    fn from(e: candle_core::Error) -> Self {
        ModelError::Inference(e.to_string())
    }
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The model directory.
    pub dir: PathBuf,
    /// The kind, when the caller knows it; detected from the files otherwise.
    pub kind: Option<ModelKind>,
    /// The device to run on.
    pub device: Device,
}

/// A loaded model of one of the kinds thaw serves. Made once per process
/// and moved onto its executor thread, so its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum LoadedModel {
    /// A sentence-embedding encoder.
    Embedding(EmbeddingModel),
    /// A tabular scorer.
    Tabular(TabularModel),
    /// A generative chat model.
    Chat(chat::ChatModel),
}

impl LoadedModel {
    /// Loads the model in `options.dir` and runs a warm-up pass, so the first
    /// request does not pay for lazy initialisation.
    pub fn load(options: &LoadOptions) -> Result<Self, ModelError> {
        let kind = if thaw_snapshot::is_snapshot(&options.dir) {
            // A snapshot is checked (format, kind, sizes) before it is mapped.
            thaw_snapshot::open(&options.dir, options.kind)
                .map_err(ModelError::load)?
                .kind
        } else {
            match options.kind {
                Some(kind) => kind,
                None => thaw_snapshot::detect_kind(&options.dir).map_err(ModelError::load)?,
            }
        };
        let model = match kind {
            ModelKind::Embedding => {
                LoadedModel::Embedding(EmbeddingModel::load(&options.dir, &options.device)?)
            }
            ModelKind::Tabular => {
                LoadedModel::Tabular(TabularModel::load(&options.dir, &options.device)?)
            }
            ModelKind::Chat => {
                LoadedModel::Chat(chat::ChatModel::load(&options.dir, &options.device)?)
            }
        };
        Ok(model)
    }

    /// Runs a snapshot manifest's warm-up inputs through the model: texts
    /// for an embedding model; for a tabular one, `zeros` is a row of zeros.
    pub fn warm_up(&self, inputs: &[String]) -> Result<(), ModelError> {
        if inputs.is_empty() {
            return Ok(());
        }
        match self {
            LoadedModel::Embedding(model) => {
                let tokens = embedding::tokenize(model.tokenizer(), inputs)
                    .map_err(|e| ModelError::Load(format!("tokenizing the warm-up: {e}")))?;
                model.encode(&tokens).map(|_| ())
            }
            LoadedModel::Tabular(model) => {
                let rows = vec![vec![0.0; model.width()]; inputs.len()];
                model.score(&rows).map(|_| ())
            }
            LoadedModel::Chat(model) => model.warm_up(inputs),
        }
    }

    /// The model's kind.
    pub fn kind(&self) -> ModelKind {
        match self {
            LoadedModel::Embedding(_) => ModelKind::Embedding,
            LoadedModel::Tabular(_) => ModelKind::Tabular,
            LoadedModel::Chat(_) => ModelKind::Chat,
        }
    }
}

/// Parses a device name: `cpu`, and in a build with the `cuda` feature
/// `cuda` (GPU 0) or `cuda:N`.
pub fn parse_device(name: &str) -> Result<Device, ModelError> {
    match name {
        "cpu" => Ok(Device::Cpu),
        #[cfg(feature = "cuda")]
        other if other == "cuda" || other.starts_with("cuda:") => {
            let ordinal = match other.strip_prefix("cuda:") {
                None => 0,
                Some(n) => n
                    .parse()
                    .map_err(|_| ModelError::Load(format!("device {other:?} is not cuda:N")))?,
            };
            Device::new_cuda(ordinal).map_err(|e| ModelError::Load(format!("opening {other}: {e}")))
        }
        other => Err(ModelError::Load(format!(
            "device {other:?} is not available in this build (only \"cpu\"; \
             scripts/build-cuda.sh builds the CUDA worker)"
        ))),
    }
}

pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value, ModelError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ModelError::Load(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Load(format!("{}: {e}", path.display())))
}
