"""A synthetic BERT embedding model directory in the layout thaw's worker
loads (config.json, tokenizer.json, model.safetensors, mean pooling), for
the GPU suite on a machine with no network: the real MiniLM cannot be
fetched there and is too large to carry. The weights are a fixed pattern of
small values (not a trained model: the outputs mean nothing, their cost and
the upload do), written at disk speed; the tokenizer is WordPiece over
letters. Standard library only.

    python3 bench/gpu/synthetic_bert.py DIR --shape minilm|large|xl
"""
import argparse
import array
import json
import os
import struct

SHAPES = {
    # all-MiniLM-L6-v2's shape: 22.7 M parameters, 91 MB in f32.
    "minilm": {"hidden": 384, "layers": 6, "heads": 12, "intermediate": 1536},
    # BERT-large's shape: 335 M parameters, 1.3 GB.
    "large": {"hidden": 1024, "layers": 24, "heads": 16, "intermediate": 4096},
    # 1.3 B parameters, 5.2 GB.
    "xl": {"hidden": 2048, "layers": 24, "heads": 32, "intermediate": 8192},
}
VOCAB = 30522
POSITIONS = 512
SPECIAL = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}


def tensors(shape):
    h, i = shape["hidden"], shape["intermediate"]
    out = [
        ("embeddings.word_embeddings.weight", [VOCAB, h]),
        ("embeddings.position_embeddings.weight", [POSITIONS, h]),
        ("embeddings.token_type_embeddings.weight", [2, h]),
        ("embeddings.LayerNorm.weight", [h]),
        ("embeddings.LayerNorm.bias", [h]),
    ]
    for n in range(shape["layers"]):
        p = f"encoder.layer.{n}."
        for name in ("query", "key", "value"):
            out += [(p + f"attention.self.{name}.weight", [h, h]), (p + f"attention.self.{name}.bias", [h])]
        out += [
            (p + "attention.output.dense.weight", [h, h]),
            (p + "attention.output.dense.bias", [h]),
            (p + "attention.output.LayerNorm.weight", [h]),
            (p + "attention.output.LayerNorm.bias", [h]),
            (p + "intermediate.dense.weight", [i, h]),
            (p + "intermediate.dense.bias", [i]),
            (p + "output.dense.weight", [h, i]),
            (p + "output.dense.bias", [h]),
            (p + "output.LayerNorm.weight", [h]),
            (p + "output.LayerNorm.bias", [h]),
        ]
    return out


def pattern(n_floats):
    """Small values in [-0.05, 0.05], period 4099 (a prime, so rows differ)."""
    period = array.array("f", (((k * 7919) % 4099 - 2049) / 40980.0 for k in range(4099)))
    block = period * (n_floats // len(period) + 1)
    return block[:n_floats].tobytes()


def write_weights(path, shape):
    specs = tensors(shape)
    header, offset = {}, 0
    for name, dims in specs:
        size = 4
        for d in dims:
            size *= d
        header[name] = {"dtype": "F32", "shape": dims, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    chunk = pattern(1 << 22)  # 16 MiB
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        left = offset
        while left:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n
    return offset


def tokenizer():
    vocab = dict(SPECIAL)
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    for k, c in enumerate(letters):
        vocab[c] = 1000 + k
        vocab["##" + c] = 1100 + k
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "special": True, "content": t, "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False}
            for t, i in SPECIAL.items()
        ],
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": True},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [101], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [102], "tokens": ["[SEP]"]},
            },
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab},
    }


def make(directory, shape_name):
    """Writes the model; returns its description (parameters, bytes)."""
    shape = SHAPES[shape_name]
    os.makedirs(directory, exist_ok=True)
    config = {
        "architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
        "hidden_size": shape["hidden"], "num_hidden_layers": shape["layers"],
        "num_attention_heads": shape["heads"], "intermediate_size": shape["intermediate"],
        "max_position_embeddings": POSITIONS, "type_vocab_size": 2, "vocab_size": VOCAB,
        "layer_norm_eps": 1e-12, "pad_token_id": 0, "position_embedding_type": "absolute",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
    }
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(directory, "tokenizer.json"), "w") as f:
        json.dump(tokenizer(), f)
    size = write_weights(os.path.join(directory, "model.safetensors"), shape)
    return {"shape": shape_name, "parameters": size // 4, "bytes": size}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="minilm")
    args = ap.parse_args()
    print(json.dumps(make(args.dir, args.shape)))
