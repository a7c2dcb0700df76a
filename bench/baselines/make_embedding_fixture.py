"""Computes the reference embeddings the worker's tests compare against.

Run once with a Python that has sentence-transformers (the library users
compare thaw against), on the model directory the fetch step made:

    python bench/baselines/make_embedding_fixture.py \
        ~/.cache/thaw/models/all-MiniLM-L6-v2 worker/tests/fixtures/minilm_reference.json
"""

import json
import sys

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

LONG = " ".join(
    f"Sentence {i} of a long report about the quarterly throughput of the "
    "inference fleet, its cold starts, and the cost of idle capacity."
    for i in range(40)
)

INPUTS = {
    "short": "A man is eating food.",
    "question": "How do I reset my password?",
    "one_word": "thaw",
    "unicode": "Zürich café — naïve résumé; 東京タワー 🚀 Ελληνικά",
    "long": LONG,
    "empty_like": " ",
    "mixed_case": "The QUICK brown Fox jumps over the lazy DOG!!",
}


def main(model_dir: str, out: str) -> None:
    torch.manual_seed(0)
    model = SentenceTransformer(model_dir, device="cpu")
    names = list(INPUTS)
    vectors = model.encode([INPUTS[n] for n in names], convert_to_numpy=True)
    tokens = {
        n: len(model.tokenizer(INPUTS[n], truncation=True, max_length=model.max_seq_length)["input_ids"])
        for n in names
    }
    fixture = {
        "comment": "sentence-transformers embeddings; see bench/baselines/make_embedding_fixture.py",
        "sentence_transformers": sentence_transformers.__version__,
        "torch": torch.__version__,
        "max_seq_length": model.max_seq_length,
        "cases": [
            {
                "name": n,
                "text": INPUTS[n],
                "tokens": tokens[n],
                "embedding": [round(float(x), 7) for x in vectors[i]],
            }
            for i, n in enumerate(names)
        ],
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {out}: {len(names)} cases, max_seq_length {model.max_seq_length}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
