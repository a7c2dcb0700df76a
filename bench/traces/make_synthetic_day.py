"""A synthetic day of invocations in the shape of the Azure Functions 2019
trace (invocations_per_function_md.anon.d01.csv: HashOwner, HashApp,
HashFunction, Trigger, then 1440 per-minute counts): an HTTP function with
a diurnal curve and quiet nights, a timer every 30 minutes, and a queue
function with a few bursts. Deterministic; the output is committed:

    python3 bench/traces/make_synthetic_day.py > bench/traces/synthetic-day.csv
"""
import math
import random

rng = random.Random(2019)
minutes = range(1440)


def poisson(lam):
    # Knuth's method; lam is small here.
    l, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= l:
            return k
        k += 1


http = []
for m in minutes:
    hour = m / 60
    # Quiet from midnight to 7:00, a peak at 14:00, a tail into the evening.
    day = max(0.0, math.sin(math.pi * (hour - 7) / 15)) if 7 <= hour <= 22 else 0.0
    http.append(poisson(0.05 + 22 * day ** 1.5))

timer = [10 if m % 30 == 0 else 0 for m in minutes]

queue = [0] * 1440
for start in (95, 610, 790, 1030, 1300):
    for i, n in enumerate((35, 60, 25)):
        queue[start + i] += n

print("HashOwner,HashApp,HashFunction,Trigger," + ",".join(str(m + 1) for m in minutes))
for name, trigger, counts in (("api", "http", http), ("report", "timer", timer), ("ingest", "queue", queue)):
    print(f"synthetic,thaw-demo,{name},{trigger}," + ",".join(map(str, counts)))
