"""The sentence-transformers side of the embedding bench (bench/embeddings.sh).

Measures what worker/benches/embeddings.rs measures for thaw, on the same
model directory and the same sentences (bench/baselines/short_sentences.txt):
the forward pass alone, tokenization excluded, for one short sentence and for
batches of 8 and 32. PyTorch on the CPU, its default threads.

    HF_HUB_OFFLINE=1 python bench/baselines/st_embeddings.py \
        ~/.cache/thaw/models/all-MiniLM-L6-v2

Prints one line per case: `st batch<N> median_ms=<ms> sentences_per_s=<n>`.
"""

import os
import statistics
import sys
import time

import torch
from sentence_transformers import SentenceTransformer

SENTENCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "short_sentences.txt")
WARM_UP_S = 2.0
MEASURE_S = 5.0


def sentences() -> list[str]:
    with open(SENTENCES, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def forward(model: SentenceTransformer, features: dict) -> torch.Tensor:
    """What `model.encode` does after tokenizing: the modules, then the output."""
    with torch.inference_mode():
        out = model(features)["sentence_embedding"]
    return out.cpu()


def median_seconds(model: SentenceTransformer, features: dict) -> float:
    end = time.perf_counter() + WARM_UP_S
    while time.perf_counter() < end:
        forward(model, features)
    times = []
    end = time.perf_counter() + MEASURE_S
    while time.perf_counter() < end or len(times) < 10:
        start = time.perf_counter()
        forward(model, features)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(model_dir: str) -> None:
    model = SentenceTransformer(model_dir, device="cpu")
    model.eval()
    texts = sentences()
    for n in (1, 8, 32):
        features = model.tokenize(texts[:n])
        seconds = median_seconds(model, features)
        print(f"st batch{n} median_ms={seconds * 1e3:.3f} sentences_per_s={n / seconds:.1f}", flush=True)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
