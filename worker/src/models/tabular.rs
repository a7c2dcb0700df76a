//! The tabular scorer: a small MLP over a fixed number of numeric features,
//! described by `thaw-model.json` (the credit-score model is one). Features
//! are standardised inside the model with the mean and deviation it carries.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::Deserialize;

use super::{read_json, ModelError};
use crate::batcher::BatchModel;

/// The manifest a tabular model directory carries.
#[derive(Debug, Clone, Deserialize)]
pub struct TabularManifest {
    /// Always `mlp` for now.
    pub architecture: String,
    /// The input tensor's name and the features' names, in order.
    pub input: TabularInput,
    /// The output tensor's name and activation.
    pub output: TabularOutput,
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
    /// The weights file, relative to the directory.
    pub weights: String,
}

/// Input description.
#[derive(Debug, Clone, Deserialize)]
pub struct TabularInput {
    /// Tensor name in KServe requests.
    pub name: String,
    /// Feature names; their count is the row width.
    pub features: Vec<String>,
}

/// Output description.
#[derive(Debug, Clone, Deserialize)]
pub struct TabularOutput {
    /// Tensor name in KServe responses.
    pub name: String,
    /// `sigmoid` or `identity`.
    pub activation: String,
}

/// A loaded tabular model.
pub struct TabularModel {
    manifest: TabularManifest,
    mean: Tensor,
    std: Tensor,
    layers: Vec<Linear>,
    sigmoid: bool,
    device: Device,
}

impl TabularModel {
    /// Loads the model in `dir` from its manifest and mapped weights.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        let manifest_path = dir.join(thaw_snapshot::kind::TABULAR_MANIFEST);
        let manifest: TabularManifest = serde_json::from_value(read_json(&manifest_path)?)
            .map_err(|e| ModelError::Load(format!("{}: {e}", manifest_path.display())))?;
        if manifest.architecture != "mlp" {
            return Err(ModelError::Load(format!(
                "tabular architecture {:?} is not supported (only \"mlp\")",
                manifest.architecture
            )));
        }
        let sigmoid = match manifest.output.activation.as_str() {
            "sigmoid" => true,
            "identity" => false,
            other => {
                return Err(ModelError::Load(format!(
                    "output activation {other:?} is not supported (sigmoid, identity)"
                )))
            }
        };
        if !thaw_snapshot::kind::is_inside_name(&manifest.weights) {
            return Err(ModelError::Load(format!(
                "{}: weights {:?} must be a file in the model's directory",
                manifest_path.display(),
                manifest.weights
            )));
        }
        let vb = thaw_snapshot::map_safetensors(&[dir.join(&manifest.weights)], DType::F32, device)
            .map_err(ModelError::load)?;
        let width = manifest.input.features.len();
        let mean = vb.get(width, "norm.mean").map_err(ModelError::load)?;
        let std = vb.get(width, "norm.std").map_err(ModelError::load)?;
        let dims: Vec<usize> = std::iter::once(width)
            .chain(manifest.hidden.iter().copied())
            .chain(std::iter::once(1))
            .collect();
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, d)| linear(vb.pp(format!("layers.{i}")), d[0], d[1]))
            .collect::<Result<Vec<_>, _>>()?;
        let model = TabularModel {
            manifest,
            mean,
            std,
            layers,
            sigmoid,
            device: device.clone(),
        };
        model.score(&[vec![0.0; width]])?;
        Ok(model)
    }

    /// The manifest, for the API's metadata.
    pub fn manifest(&self) -> &TabularManifest {
        &self.manifest
    }

    /// Features per row.
    pub fn width(&self) -> usize {
        self.manifest.input.features.len()
    }

    /// Scores rows of features (each exactly `width()` long). A row whose
    /// arithmetic overflowed f32 scores NaN.
    pub fn score(&self, rows: &[Vec<f32>]) -> Result<Vec<f32>, ModelError> {
        let width = self.width();
        if let Some(bad) = rows.iter().find(|r| r.len() != width) {
            return Err(ModelError::Inference(format!(
                "a row has {} features, the model takes {width}",
                bad.len()
            )));
        }
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let mut x = Tensor::from_vec(flat, (rows.len(), width), &self.device)?
            .broadcast_sub(&self.mean)?
            .broadcast_div(&self.std)?;
        // A row whose values overflow f32 somewhere inside (inf, then NaN)
        // must not come out as a plausible score: ReLU turns NaN into 0, so
        // such a row would score as if its features were all zero. Each
        // layer's `x * 0` is 0 where finite and NaN where not; its row sums
        // poison the row's score, which the API refuses.
        let mut poison = Tensor::zeros((rows.len(), 1), DType::F32, &self.device)?;
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x)?;
            poison = (poison + x.affine(0.0, 0.0)?.sum_keepdim(1)?)?;
            if i < last {
                x = x.relu()?;
            }
        }
        x = x.broadcast_add(&poison)?;
        if self.sigmoid {
            x = candle_nn::ops::sigmoid(&x)?;
        }
        Ok(x.flatten_all()?.to_vec1::<f32>()?)
    }
}

fn linear(vb: VarBuilder, inputs: usize, outputs: usize) -> Result<Linear, ModelError> {
    let weight = vb
        .get((outputs, inputs), "weight")
        .map_err(ModelError::load)?;
    let bias = vb.get(outputs, "bias").map_err(ModelError::load)?;
    Ok(Linear::new(weight, Some(bias)))
}

impl BatchModel for TabularModel {
    type Input = Vec<f32>;
    type Output = f32;

    fn forward(&mut self, batch: &[Vec<f32>]) -> Result<Vec<f32>, ModelError> {
        self.score(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_outside_the_model_directory_are_refused() {
        let credit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/models/credit-score");
        let dir = tempfile::tempdir().expect("temp dir");
        let text = std::fs::read_to_string(credit.join(thaw_snapshot::kind::TABULAR_MANIFEST))
            .expect("manifest");
        let mut m: serde_json::Value = serde_json::from_str(&text).expect("json");
        for weights in ["../model.safetensors", "/etc/hostname"] {
            m["weights"] = serde_json::json!(weights);
            std::fs::write(
                dir.path().join(thaw_snapshot::kind::TABULAR_MANIFEST),
                m.to_string(),
            )
            .expect("write");
            let Err(e) = TabularModel::load(dir.path(), &Device::Cpu) else {
                panic!("{weights}: loaded");
            };
            assert!(
                e.to_string()
                    .contains("must be a file in the model's directory"),
                "{e}"
            );
        }
    }
}
