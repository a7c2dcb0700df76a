//! Generates `configs/models/credit-score/`: the seed's tabular credit-scoring
//! model, a small MLP trained here on synthetic applicants with fixed seeds,
//! so the committed files can be rebuilt bit for bit:
//!
//!     cargo run --release -p thaw-worker --example gen_credit_score -- configs/models/credit-score
//!
//! Writes `model.safetensors` (normalisation and layer weights, f32),
//! `thaw-model.json` (the manifest the worker reads) and `reference.json`
//! (inputs and the outputs of this file's own f64 forward pass, which the
//! tests compare the worker against).

use std::collections::HashMap;
use std::path::PathBuf;

use safetensors::tensor::{Dtype, TensorView};

/// Feature name, population mean and standard deviation of the synthetic data.
const FEATURES: [(&str, f64, f64); 10] = [
    ("income_k", 60.0, 25.0),
    ("debt_to_income", 0.35, 0.15),
    ("credit_history_years", 10.0, 6.0),
    ("open_accounts", 8.0, 4.0),
    ("delinquencies_2y", 0.5, 1.0),
    ("credit_utilization", 0.3, 0.2),
    ("loan_amount_k", 20.0, 15.0),
    ("loan_term_months", 48.0, 18.0),
    ("employment_years", 6.0, 5.0),
    ("recent_inquiries", 1.5, 1.5),
];
const HIDDEN: [usize; 2] = [16, 8];

/// splitmix64: a tiny deterministic generator, enough for synthetic data.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-12), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// The ground truth the synthetic labels come from: log-odds of default on
/// standardised features, with a non-linear utilisation term.
fn true_logit(z: &[f64]) -> f64 {
    -1.5 - 0.8 * z[0] + 0.9 * z[1] - 0.5 * z[2]
        + 0.1 * z[3]
        + 0.7 * z[4]
        + 0.6 * z[5]
        + 0.4 * z[5] * z[5]
        + 0.3 * z[6]
        + 0.15 * z[7]
        - 0.3 * z[8]
        + 0.35 * z[9]
}

struct Layer {
    w: Vec<Vec<f64>>, // [out][in]
    b: Vec<f64>,
}

impl Layer {
    fn new(rng: &mut Rng, inputs: usize, outputs: usize) -> Self {
        let scale = (2.0 / inputs as f64).sqrt();
        let w = (0..outputs)
            .map(|_| (0..inputs).map(|_| rng.normal() * scale).collect())
            .collect();
        Layer {
            w,
            b: vec![0.0; outputs],
        }
    }
    fn forward(&self, x: &[f64]) -> Vec<f64> {
        self.w
            .iter()
            .zip(&self.b)
            .map(|(row, b)| row.iter().zip(x).map(|(w, x)| w * x).sum::<f64>() + b)
            .collect()
    }
}

fn relu(v: Vec<f64>) -> Vec<f64> {
    v.into_iter().map(|x| x.max(0.0)).collect()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn standardise(raw: &[f64]) -> Vec<f64> {
    raw.iter()
        .zip(FEATURES)
        .map(|(x, (_, m, s))| (x - m) / s)
        .collect()
}

/// The model's forward pass on raw features, in f64: the reference.
fn forward(layers: &[Layer], raw: &[f64]) -> f64 {
    let h1 = relu(layers[0].forward(&standardise(raw)));
    let h2 = relu(layers[1].forward(&h1));
    sigmoid(layers[2].forward(&h2)[0])
}

fn sample(rng: &mut Rng) -> (Vec<f64>, f64) {
    let z: Vec<f64> = (0..FEATURES.len()).map(|_| rng.normal()).collect();
    let raw = z
        .iter()
        .zip(FEATURES)
        .map(|(z, (_, m, s))| m + z * s)
        .collect();
    let label = f64::from(u8::from(rng.uniform() < sigmoid(true_logit(&z))));
    (raw, label)
}

/// One SGD step of binary cross-entropy on one example.
fn train_step(layers: &mut [Layer], raw: &[f64], label: f64, lr: f64) {
    let x0 = standardise(raw);
    let a1 = layers[0].forward(&x0);
    let h1 = relu(a1.clone());
    let a2 = layers[1].forward(&h1);
    let h2 = relu(a2.clone());
    let p = sigmoid(layers[2].forward(&h2)[0]);
    let d3 = vec![p - label];
    let backprop = |layer: &Layer, d: &[f64], pre: &[f64]| -> Vec<f64> {
        (0..pre.len())
            .map(|i| {
                let g: f64 = d.iter().zip(&layer.w).map(|(d, row)| d * row[i]).sum();
                if pre[i] > 0.0 {
                    g
                } else {
                    0.0
                }
            })
            .collect()
    };
    let d2 = backprop(&layers[2], &d3, &a2);
    let d1 = backprop(&layers[1], &d2, &a1);
    for (layer, (d, input)) in layers.iter_mut().zip([(&d1, &x0), (&d2, &h1), (&d3, &h2)]) {
        for (o, d) in d.iter().enumerate() {
            for (w, x) in layer.w[o].iter_mut().zip(input.iter()) {
                *w -= lr * d * x;
            }
            layer.b[o] -= lr * d;
        }
    }
}

fn f32_bytes(values: impl IntoIterator<Item = f64>) -> Vec<u8> {
    values
        .into_iter()
        .flat_map(|v| (v as f32).to_le_bytes())
        .collect()
}

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "configs/models/credit-score".into()),
    );
    std::fs::create_dir_all(&out)?;
    let mut rng = Rng(0x74_68_61_77); // "thaw"
    let dims = [FEATURES.len(), HIDDEN[0], HIDDEN[1], 1];
    let mut layers: Vec<Layer> = dims
        .windows(2)
        .map(|d| Layer::new(&mut rng, d[0], d[1]))
        .collect();
    for epoch in 0..20 {
        let lr = 0.02 / (1.0 + epoch as f64 * 0.3);
        for _ in 0..5000 {
            let (raw, label) = sample(&mut rng);
            train_step(&mut layers, &raw, label, lr);
        }
    }

    // Weights quantised to f32 before the reference is computed, so the
    // reference is the f64 forward of exactly the weights the file holds.
    for layer in &mut layers {
        for row in &mut layer.w {
            row.iter_mut().for_each(|w| *w = f64::from(*w as f32));
        }
        layer.b.iter_mut().for_each(|b| *b = f64::from(*b as f32));
    }

    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = vec![
        (
            "norm.mean".into(),
            vec![FEATURES.len()],
            f32_bytes(FEATURES.iter().map(|f| f.1)),
        ),
        (
            "norm.std".into(),
            vec![FEATURES.len()],
            f32_bytes(FEATURES.iter().map(|f| f.2)),
        ),
    ];
    for (i, layer) in layers.iter().enumerate() {
        let shape = vec![layer.w.len(), layer.w[0].len()];
        tensors.push((
            format!("layers.{i}.weight"),
            shape,
            f32_bytes(layer.w.iter().flatten().copied()),
        ));
        tensors.push((
            format!("layers.{i}.bias"),
            vec![layer.b.len()],
            f32_bytes(layer.b.iter().copied()),
        ));
    }
    let views: HashMap<String, TensorView<'_>> = tensors
        .iter()
        .map(|(name, shape, data)| {
            Ok((
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), data)?,
            ))
        })
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    safetensors::serialize_to_file(&views, None, &out.join("model.safetensors"))?;

    let manifest = serde_json::json!({
        "kind": "tabular",
        "architecture": "mlp",
        "description": "Probability that a loan applicant defaults, from ten raw features. \
                        Synthetic training data; a demonstration model, not a credit policy.",
        "input": {
            "name": "features",
            "features": FEATURES.iter().map(|f| f.0).collect::<Vec<_>>(),
        },
        "output": { "name": "probability", "activation": "sigmoid" },
        "hidden": HIDDEN,
        "hidden_activation": "relu",
        "weights": "model.safetensors",
        "generator": "worker/examples/gen_credit_score.rs",
    });
    std::fs::write(
        out.join("thaw-model.json"),
        serde_json::to_string_pretty(&manifest)? + "\n",
    )?;

    let mut check = Rng(42);
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    for _ in 0..16 {
        let (raw, _) = sample(&mut check);
        let raw: Vec<f64> = raw.iter().map(|x| f64::from(*x as f32)).collect();
        outputs.push(forward(&layers, &raw));
        inputs.push(raw);
    }
    let reference = serde_json::json!({
        "comment": "outputs of gen_credit_score.rs's own f64 forward pass",
        "inputs": inputs,
        "outputs": outputs,
    });
    std::fs::write(
        out.join("reference.json"),
        serde_json::to_string_pretty(&reference)? + "\n",
    )?;
    println!("wrote {}", out.display());
    Ok(())
}
