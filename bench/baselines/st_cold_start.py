"""The seed's cold start, as the baseline of bench/cold-start.sh: a fresh
Python process imports sentence-transformers, loads the model directory and
answers one request (embeds one sentence), then reports. The harness times it
from the process's start to the `answered` line it prints; the line carries
the process's own peak memory.

    HF_HUB_OFFLINE=1 python bench/baselines/st_cold_start.py \
        ~/.cache/thaw/models/all-MiniLM-L6-v2

Prints `answered dims=<n> peak_rss_kib=<kib>` (nothing else on stdout).
"""

import resource
import sys

from sentence_transformers import SentenceTransformer

model = SentenceTransformer(sys.argv[1], device="cpu")
vector = model.encode(["A short sentence to embed."])[0]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"answered dims={len(vector)} peak_rss_kib={peak}", flush=True)
