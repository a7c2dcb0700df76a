//! Model kinds and their detection from a model directory's files.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a model does, which decides the API it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Text in, a vector out (BERT family, sentence-transformers layout).
    Embedding,
    /// Features in, a score out (the tabular MLP with its manifest).
    Tabular,
    /// Messages in, generated text out (a GGUF llama-family model).
    Chat,
}

impl ModelKind {
    /// The name used in configs, on the command line and in APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Embedding => "embedding",
            ModelKind::Tabular => "tabular",
            ModelKind::Chat => "chat",
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ModelKind {
    type Err = KindError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "embedding" => Ok(ModelKind::Embedding),
            "tabular" => Ok(ModelKind::Tabular),
            "chat" => Ok(ModelKind::Chat),
            other => Err(KindError::Unknown(other.to_string())),
        }
    }
}

/// Why a model kind could not be named or detected.
#[derive(Debug, thiserror::Error)]
pub enum KindError {
    /// A kind name that is not one of `embedding`, `tabular`, `chat`.
    #[error("unknown model kind {0:?} (expected embedding, tabular or chat)")]
    Unknown(String),
    /// The directory's files match no kind.
    #[error("cannot detect the model kind of {dir}: {why}")]
    Undetected {
        /// The model directory.
        dir: String,
        /// What was looked for.
        why: String,
    },
}

/// The name of the manifest a tabular model directory carries.
pub const TABULAR_MANIFEST: &str = "thaw-model.json";

/// Detects the kind of the model in `dir` from its files: a tabular manifest,
/// a BERT-family `config.json`, or a `.gguf` file.
pub fn detect_kind(dir: &Path) -> Result<ModelKind, KindError> {
    let undetected = |why: &str| KindError::Undetected {
        dir: dir.display().to_string(),
        why: why.to_string(),
    };
    if !dir.is_dir() {
        return Err(undetected("not a directory"));
    }
    let has_gguf = std::fs::read_dir(dir)
        .map_err(|e| undetected(&e.to_string()))?
        .flatten()
        .any(|e| e.path().extension().is_some_and(|x| x == "gguf"));
    let markers: Vec<&str> = [
        (dir.join(TABULAR_MANIFEST).is_file(), TABULAR_MANIFEST),
        (dir.join("config.json").is_file(), "config.json"),
        (has_gguf, "a .gguf file"),
    ]
    .into_iter()
    .filter_map(|(there, name)| there.then_some(name))
    .collect();
    if markers.len() > 1 {
        return Err(undetected(&format!(
            "it holds {}: one model per directory",
            markers.join(" and ")
        )));
    }
    if dir.join(TABULAR_MANIFEST).is_file() {
        return Ok(ModelKind::Tabular);
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("config.json")) {
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| undetected(&format!("config.json: {e}")))?;
        let model_type = config["model_type"].as_str().unwrap_or_default();
        if is_bert_family(model_type) {
            return Ok(ModelKind::Embedding);
        }
        return Err(undetected(&format!(
            "config.json has model_type {model_type:?}, not a BERT-family encoder"
        )));
    }
    if has_gguf {
        return Ok(ModelKind::Chat);
    }
    Err(undetected(&format!(
        "no {TABULAR_MANIFEST}, config.json or .gguf file"
    )))
}

fn is_bert_family(model_type: &str) -> bool {
    matches!(
        model_type,
        "bert" | "roberta" | "xlm-roberta" | "distilbert"
    )
}

/// Whether `name`, from a model's own files (a tabular manifest's
/// `weights`), names a file inside the model's directory: relative, no
/// `..`, not empty.
pub fn is_inside_name(name: &str) -> bool {
    !name.is_empty()
        && std::path::Path::new(name)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in [ModelKind::Embedding, ModelKind::Tabular, ModelKind::Chat] {
            assert_eq!(kind.as_str().parse::<ModelKind>().ok(), Some(kind));
        }
        assert!("vision".parse::<ModelKind>().is_err());
    }

    #[test]
    fn detects_each_kind() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = dir.path();
        assert!(detect_kind(p).is_err(), "an empty directory has no kind");

        std::fs::write(p.join("config.json"), r#"{"model_type":"bert"}"#).expect("write");
        assert_eq!(detect_kind(p).ok(), Some(ModelKind::Embedding));

        std::fs::write(p.join("config.json"), r#"{"model_type":"t5"}"#).expect("write");
        assert!(detect_kind(p).is_err(), "t5 is not served as an embedding");

        // Two models' files in one directory: which one is meant is not
        // guessed.
        std::fs::write(p.join(TABULAR_MANIFEST), "{}").expect("write");
        let e = detect_kind(p).expect_err("ambiguous");
        assert!(e.to_string().contains("one model per directory"), "{e}");
        std::fs::remove_file(p.join("config.json")).expect("remove");
        assert_eq!(detect_kind(p).ok(), Some(ModelKind::Tabular));

        let g = tempfile::tempdir().expect("temp dir");
        std::fs::write(g.path().join("m.gguf"), b"GGUF").expect("write");
        assert_eq!(detect_kind(g.path()).ok(), Some(ModelKind::Chat));
        std::fs::write(g.path().join(TABULAR_MANIFEST), "{}").expect("write");
        assert!(detect_kind(g.path()).is_err());
    }
}
