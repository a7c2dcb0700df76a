"""thaw's GPU suite (bench/gpu/run.sh runs it): on a machine with an NVIDIA
GPU, no network and no Rust toolchain, with thaw-worker built here by
scripts/build-cuda.sh and carried. Writes one JSON report. Every step has a
time limit; a step that cannot run says why instead of giving a number.

    python3 bench/gpu/suite.py --worker PATH --out DIR [--sizes-gb 1 16]
"""
import argparse
import json
import os
import platform
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import synthetic_bert
import synthetic_gguf

CHUNK = 64 << 20


def run(cmd, env=None, timeout=120):
    start = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    return p, time.perf_counter() - start


def cuda_library_path():
    """The CUDA libraries of this machine's PyTorch (nvidia/*/lib), which the
    carried worker links against at run time."""
    dirs = []
    for base in sys.path:
        root = os.path.join(base, "nvidia")
        if os.path.isdir(root):
            for sub in sorted(os.listdir(root)):
                lib = os.path.join(root, sub, "lib")
                if os.path.isdir(lib):
                    dirs.append(lib)
    return dirs


def worker_env():
    env = dict(os.environ)
    extra = cuda_library_path()
    if extra:
        env["LD_LIBRARY_PATH"] = ":".join(extra + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    return env


def step(report, name, fn):
    start = time.perf_counter()
    try:
        report[name] = fn()
    except Exception as e:  # a step that fails is reported, the suite goes on
        report[name] = {"error": f"{type(e).__name__}: {e}"}
    report[name + "_s"] = round(time.perf_counter() - start, 3)
    print(f"{name}: {json.dumps(report[name])[:300]}", file=sys.stderr)


def nvidia_smi():
    if not shutil.which("nvidia-smi"):
        return {"skipped": "no nvidia-smi: no NVIDIA driver on this machine"}
    p, _ = run(["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version,pcie.link.gen.max,pcie.link.width.max",
                "--format=csv,noheader"])
    return {"gpus": [line.strip() for line in p.stdout.splitlines() if line.strip()]}


def inventory(worker):
    p, took = run([worker, "--gpu-info"], env=worker_env())
    if p.returncode != 0:
        return {"error": (p.stderr or p.stdout).strip()[-500:]}
    out = json.loads(p.stdout)
    # One process: start, driver init, a context on every GPU, the queries.
    out["process_s"] = round(took, 3)
    return out


def context_creation(worker):
    """A fresh process creating one CUDA context (GPU 0), thaw's and torch's."""
    env = worker_env()
    env["CUDA_VISIBLE_DEVICES"] = "0"
    times = []
    for _ in range(3):
        p, took = run([worker, "--gpu-info"], env=env)
        if p.returncode != 0 or not json.loads(p.stdout).get("gpus"):
            return {"error": (p.stderr or p.stdout).strip()[-500:]}
        times.append(took)
    result = {"thaw_worker_process_to_context_s": sorted(times)[1]}
    code = "import time,torch;t=time.perf_counter();torch.zeros(1,device='cuda');torch.cuda.synchronize();print(time.perf_counter()-t)"
    p, _ = run([sys.executable, "-c", code], env=env)
    if p.returncode == 0:
        result["torch_first_op_s"] = float(p.stdout.strip())
    return result


def copy_ceiling():
    """Host-to-device copies of 1 GiB with PyTorch: pinned (the ceiling) and
    pageable, best of five."""
    try:
        import torch
    except ImportError:
        return {"skipped": "no PyTorch here to measure the copy ceiling with"}
    if not torch.cuda.is_available():
        return {"skipped": "PyTorch sees no GPU"}
    n = 1 << 30
    out = {}
    for kind in ("pinned", "pageable"):
        host = torch.empty(n, dtype=torch.uint8, pin_memory=(kind == "pinned"))
        host.random_(0, 255)
        dev = torch.empty(n, dtype=torch.uint8, device="cuda")
        best = None
        for _ in range(5):
            torch.cuda.synchronize()
            t = time.perf_counter()
            dev.copy_(host, non_blocking=False)
            torch.cuda.synchronize()
            took = time.perf_counter() - t
            best = took if best is None else min(best, took)
        out[kind + "_gb_per_s"] = round(n / best / 1e9, 2)
        del host, dev
    return out


def synthetic_snapshot(directory, gb):
    """A safetensors file of `gb` GB of random bytes (never zeros: one random
    64 MiB block, repeated), read once so that it sits in the page cache."""
    n = int(gb * 1e9) // CHUNK * CHUNK or CHUNK
    path = os.path.join(directory, f"synthetic-{gb:g}gb.safetensors")
    header = json.dumps({"weights": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
    header += b" " * (-len(header) % 8)
    t = time.perf_counter()
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        block = os.urandom(CHUNK)
        for _ in range(n // CHUNK):
            f.write(block)
    written = time.perf_counter() - t
    with open(path, "rb") as f:
        while f.read(CHUNK):
            pass
    return path, {"bytes": n, "write_s": round(written, 2)}


def upload(worker, path):
    p, _ = run([worker, "--upload-bench", path], env=worker_env(), timeout=180)
    if p.returncode != 0:
        return {"error": (p.stderr or p.stdout).strip()[-500:]}
    return json.loads(p.stdout)


class Worker:
    """A thaw-worker process whose stdout JSON lines are read on a thread."""

    def __init__(self, cmd, env):
        self.started = time.perf_counter()
        self.p = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            try:
                self.lines.put((time.perf_counter(), json.loads(line)))
            except ValueError:
                pass
        self.lines.put((time.perf_counter(), None))

    def wait(self, event, timeout=120):
        """(when, message) of the next `event` line."""
        deadline = time.perf_counter() + timeout
        while True:
            when, message = self.lines.get(timeout=max(0.0, deadline - time.perf_counter()))
            if message is None:
                raise RuntimeError(f"exited before {event!r}: {self.p.stderr.read()[-500:]}")
            if message.get("event") == event:
                return when, message

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


def send(address, method, path, body=None, timeout=120):
    """Opens a connection to `address` (`unix:PATH` or `HOST:PORT`) and
    sends one HTTP/1.1 request with a JSON body: the socket, to read the
    answer from."""
    data = json.dumps(body).encode() if body is not None else b""
    head = (f"{method} {path} HTTP/1.1\r\nHost: thaw\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
    if address.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(timeout)
        s.connect(address[len("unix:"):])
    else:
        host, port = address.rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=timeout)
    s.sendall(head + data)
    return s


def http(address, method, path, body=None, timeout=120):
    """One HTTP/1.1 request: (status, headers, body), the body de-chunked
    if it came chunked."""
    s = send(address, method, path, body, timeout)
    out = b""
    while True:
        chunk = s.recv(1 << 16)
        if not chunk:
            break
        out += chunk
    s.close()
    raw_headers, payload = out.split(b"\r\n\r\n", 1)
    lines = raw_headers.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
    if headers.get("transfer-encoding") == "chunked":
        body_out, rest = b"", payload
        while rest:
            size, rest = rest.split(b"\r\n", 1)
            n = int(size, 16)
            if n == 0:
                break
            body_out, rest = body_out + rest[:n], rest[n + 2:]
        payload = body_out
    return int(lines[0].split()[1]), headers, payload


def post_embeddings(sock, text):
    """One /v1/embeddings request over a unix socket: the vector, after
    checking the status."""
    status, _, body = http(f"unix:{sock}", "POST", "/v1/embeddings",
                           {"model": "synthetic", "input": [text]}, timeout=60)
    if status != 200:
        raise RuntimeError(f"the embedding request answered {status}: {body[-300:]!r}")
    return json.loads(body)["data"][0]["embedding"]


def embed(sock, text="the quick brown fox"):
    """One /v1/embeddings request over a unix socket; the time it took."""
    t = time.perf_counter()
    post_embeddings(sock, text)
    return time.perf_counter() - t


def standby_activation(worker, device, shapes):
    """For each synthetic BERT shape: a standby process on `device` (its
    context made ahead), activated with the model, to its first output;
    against a plain worker process started on the model (the cold start
    without a standby pool). Milliseconds."""
    out = {"device": device}
    for shape in shapes:
        with tempfile.TemporaryDirectory() as d:
            model = os.path.join(d, "model")
            made = synthetic_bert.make(model, shape)
            weights = os.path.join(model, "model.safetensors")
            with open(weights, "rb") as f:
                while f.read(CHUNK):  # into the page cache, as a snapshot would be
                    pass
            sock = os.path.join(d, "w.sock")
            env = worker_env()
            runs = {}
            # As the gateway's standby processes run: without and with the
            # snapshot registered ahead (--preregister).
            for variant, extra in (("plain", []), ("preregistered", ["--preregister", weights])):
                if os.path.exists(sock):
                    os.remove(sock)
                w = Worker([worker, "--standby", "--device", device, "--lifeline", *extra], env)
                try:
                    t_standby, standby = w.wait("standby")
                    activation = {"model": model, "name": "synthetic", "kind": "embedding",
                                  "listen": f"unix:{sock}"}
                    t_activate = time.perf_counter()
                    w.p.stdin.write(json.dumps(activation) + "\n")
                    w.p.stdin.flush()
                    t_ready, ready = w.wait("ready")
                    embed(sock)
                    t_first = time.perf_counter()
                    warm = min(embed(sock) for _ in range(5))
                finally:
                    w.stop()
                runs[variant] = (t_standby - w.started, standby, t_activate, t_ready, ready, t_first, warm)
            os.remove(sock) if os.path.exists(sock) else None
            plain = Worker([worker, "--model", model, "--name", "synthetic", "--device", device,
                            "--listen", f"unix:{sock}"], env)
            try:
                t_plain_ready, _ = plain.wait("ready")
                embed(sock)
                t_plain_first = time.perf_counter()
            finally:
                plain.stop()
            to_standby, standby, t_activate, t_ready, ready, t_first, warm = runs["plain"]
            activation_ms = (t_first - t_activate) * 1e3
            plain_ms = (t_plain_first - plain.started) * 1e3
            ahead = runs["preregistered"]
            ahead_ms = (ahead[5] - ahead[2]) * 1e3
            registered = (ahead[1].get("preregistered") or [{}])[0]
            out[shape] = {
                **made,
                "standby_process_to_ready_ms": round(to_standby * 1e3, 1),
                "standby_context_ms": round(standby["context_ms"], 1),
                "activation_to_ready_ms": round((t_ready - t_activate) * 1e3, 1),
                "worker_load_ms": round(ready["load_ms"], 1),
                "activation_to_first_output_ms": round(activation_ms, 1),
                "warm_request_ms": round(warm * 1e3, 2),
                "plain_start_to_first_output_ms": round(plain_ms, 1),
                "plain_start_to_ready_ms": round((t_plain_ready - plain.started) * 1e3, 1),
                "plain_vs_activation": round(plain_ms / activation_ms, 2),
                "preregistered": registered,
                "preregistered_activation_to_first_output_ms": round(ahead_ms, 1),
                "preregistered_worker_load_ms": round(ahead[4]["load_ms"], 1),
                "preregistered_load_gb_per_s": round(made["bytes"] / (ahead[4]["load_ms"] / 1e3) / 1e9, 2)
                if ahead[4]["load_ms"] > 0 else None,
                "plain_vs_preregistered_activation": round(plain_ms / ahead_ms, 2),
            }
    return out


def gpu0_free_bytes(worker):
    p, _ = run([worker, "--gpu-info"], env=worker_env())
    return json.loads(p.stdout)["gpus"][0]["free_bytes"]


def embedding_of(sock):
    """The vector for a fixed text, to compare across a hibernation."""
    return post_embeddings(sock, "the same words")


def hibernate_resume(worker, shape):
    """A worker on GPU 0 serving a synthetic model of `shape` is hibernated
    (thaw-worker --hibernate PID) and resumed; the GPU's free memory before
    and after, the timings, and whether it answers the same afterwards."""
    with tempfile.TemporaryDirectory() as d:
        model = os.path.join(d, "model")
        made = synthetic_bert.make(model, shape)
        sock = os.path.join(d, "w.sock")
        env = worker_env()
        w = Worker([worker, "--model", model, "--name", "synthetic", "--device", "cuda:0",
                    "--listen", f"unix:{sock}"], env)
        try:
            w.wait("ready")
            before = embedding_of(sock)
            free_hot = gpu0_free_bytes(worker)
            p, _ = run([worker, "--hibernate", str(w.p.pid)], env=env)
            hibernated = json.loads(p.stdout)
            if "error" in hibernated:
                return {**made, "hibernate": hibernated}
            free_hibernated = gpu0_free_bytes(worker)
            p, _ = run([worker, "--resume", str(w.p.pid)], env=env)
            resumed = json.loads(p.stdout)
            if "error" in resumed:
                return {**made, "hibernate": hibernated, "resume": resumed}
            t = time.perf_counter()
            after = embedding_of(sock)
            first_ms = (time.perf_counter() - t) * 1e3
        finally:
            w.stop()
        restore_s = resumed["restore_ms"] / 1e3
        return {
            **made,
            "hibernate": hibernated,
            "resume": resumed,
            "gpu_memory_released_bytes": free_hibernated - free_hot,
            "restore_gb_per_s_of_weights": round(made["bytes"] / restore_s / 1e9, 2) if restore_s else None,
            "first_request_after_resume_ms": round(first_ms, 2),
            "same_output_after_resume": max(abs(a - b) for a, b in zip(before, after)) < 1e-5,
        }


def stream_chat(sock, max_tokens, content="Write a long story about a lighthouse keeper."):
    """One streamed /v1/chat/completions request (greedy) over a unix
    socket: (time to first content, seconds from first to last content,
    completion tokens)."""
    request = {"model": "smollm2", "messages": [{"role": "user", "content": content}],
               "max_tokens": max_tokens, "temperature": 0, "stream": True,
               "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    s = send(f"unix:{sock}", "POST", "/v1/chat/completions", request)
    buf, first, last, tokens, status = b"", None, None, None, None
    while True:
        chunk = s.recv(1 << 16)
        if not chunk:
            break
        now = time.perf_counter()
        buf += chunk
        if status is None and b"\r\n" in buf:
            status = int(buf.split(b" ", 2)[1])
            if status != 200:
                raise RuntimeError(f"the chat request answered {status}: {buf[-300:]!r}")
        # SSE events ("data: ...\n\n"), each in its own HTTP chunk.
        while b"data: " in buf and b"\n\n" in buf[buf.index(b"data: "):]:
            at = buf.index(b"data: ")
            end = buf.index(b"\n\n", at)
            event, buf = buf[at + 6:end], buf[end + 2:]
            if event == b"[DONE]":
                continue
            message = json.loads(event)
            if message.get("usage"):
                tokens = message["usage"]["completion_tokens"]
            for choice in message.get("choices", []):
                if choice.get("delta", {}).get("content"):
                    first = first or now
                    last = now
    s.close()
    if first is None or tokens is None:
        raise RuntimeError("the stream had no content or no usage")
    return first - start, last - first, tokens


def chat_decode(worker, device, gguf, max_tokens=128):
    """SmolLM2 served by a worker on `device`: load, time to first token and
    decode tokens/s for one stream, and for four streams together (the
    engine batches them). `gguf` is the model, or its header alone
    (synthetic_gguf.py), from which weights are synthesized."""
    with tempfile.TemporaryDirectory() as d:
        model = os.path.join(d, "smollm2")
        os.makedirs(model)
        path = os.path.join(model, "model.gguf")
        if os.path.getsize(gguf) < (16 << 20):
            weights = "synthetic (SmolLM2's header, random blocks)"
            synthetic_gguf.make(gguf, path)
        else:
            weights = "SmolLM2-135M-Instruct Q4_1"
            os.symlink(os.path.abspath(gguf), path)
        sock = os.path.join(d, "w.sock")
        w = Worker([worker, "--model", model, "--name", "smollm2", "--device", device,
                    "--listen", f"unix:{sock}"], worker_env())
        try:
            t_ready, ready = w.wait("ready")
            stream_chat(sock, 8)  # warm
            ttft, decode_s, tokens = stream_chat(sock, max_tokens)
            results = queue.Queue()
            started = time.perf_counter()
            threads = [threading.Thread(target=lambda: results.put(stream_chat(sock, max_tokens)))
                       for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            together_s = time.perf_counter() - started
            four = [results.get_nowait() for _ in range(results.qsize())]
        finally:
            w.stop()
    if len(four) != 4:
        raise RuntimeError(f"{4 - len(four)} of the four streams failed")
    return {
        "device": device,
        "weights": weights,
        "process_to_ready_ms": round((t_ready - w.started) * 1e3, 1),
        "load_ms": round(ready["load_ms"], 1),
        "ttft_ms": round(ttft * 1e3, 2),
        "tokens": tokens,
        "decode_tokens_per_s": round((tokens - 1) / decode_s, 1) if decode_s > 0 else None,
        "four_streams_tokens_per_s": round(sum(f[2] for f in four) / together_s, 1),
        "four_streams_max_ttft_ms": round(max(f[0] for f in four) * 1e3, 2),
    }


def gateway_hibernation(worker, gateway, shape="large"):
    """The gateway's hibernation tier on a real GPU: `thaw serve` with a
    synthetic embedding model on `cuda`, scaled to zero after 2 s idle
    (keep_template 1 h): its worker should hibernate instead of stopping,
    and the next request resume the same process. Timings from the
    gateway's own headers and status."""
    with tempfile.TemporaryDirectory() as d:
        model = os.path.join(d, "model")
        made = synthetic_bert.make(model, shape)
        config = os.path.join(d, "thaw.toml")
        with open(config, "w") as f:
            f.write(f"""[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
state_dir = "{d}/state"
gpu_standby = 1

[[models]]
name = "synthetic"
source = "{model}"
kind = "embedding"
device = "cuda"
[models.scaling]
min_instances = 0
max_instances = 1
keep_template = "1h"
scale_to_zero_after = "2s"
stable_window = "2s"
panic_window = "1s"
scale_down_delay = "1s"
""")
        g = Worker([gateway, "serve", "--config", config, "--worker-bin", worker], worker_env())
        try:
            _, ready = g.wait("ready", timeout=120)
            public, admin = ready["address"], ready["admin"]
            request = {"model": "synthetic", "input": ["the same words"]}

            def embed(what):
                """The request, timed: (ms, headers, embedding), or an error."""
                t = time.perf_counter()
                status, headers, body = http(public, "POST", "/v1/embeddings", request)
                ms = (time.perf_counter() - t) * 1e3
                if status != 200:
                    return {**made, "error": f"{what} {status}: {body[-300:]!r}"}
                return ms, headers, json.loads(body)["data"][0]["embedding"]

            first = embed("first request")
            if isinstance(first, dict):
                return first
            first_ms, headers, before = first
            worker_before = headers.get("x-thaw-worker")
            # Idle: the autoscaler scales to zero; wait for the tier change.
            deadline = time.perf_counter() + 90
            state, hibernated_after = None, None
            t_idle = time.perf_counter()
            while time.perf_counter() < deadline:
                _, _, raw = http(admin, "GET", "/admin/status")
                st = json.loads(raw)
                instances = next(m for m in st["models"] if m["name"] == "synthetic")["instances"]
                state = instances[0]["state"] if instances else "none"
                if state in ("hibernated", "none"):
                    hibernated_after = time.perf_counter() - t_idle
                    break
                time.sleep(0.2)
            support = st.get("gpus", {}).get("hibernation")
            if state != "hibernated":
                return {**made, "hibernation": support, "state_after_idle": state,
                        "error": "the worker did not hibernate"}
            resumed = embed("request after hibernation")
            if isinstance(resumed, dict):
                return resumed
            resumed_ms, headers, after = resumed
            _, _, raw = http(admin, "GET", "/admin/status")
            st = json.loads(raw)
            instance = next(m for m in st["models"] if m["name"] == "synthetic")["instances"][0]
        finally:
            if g.p.poll() is None:
                g.p.terminate()
                try:
                    g.p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    g.stop()
    return {
        **made,
        "hibernation": support,
        "first_request_ms": round(first_ms, 1),
        "idle_to_hibernated_s": round(hibernated_after, 2),
        "request_after_hibernation_ms": round(resumed_ms, 1),
        "cold_start_header_ms": headers.get("x-thaw-cold-start-ms"),
        "same_worker": headers.get("x-thaw-worker") == worker_before,
        "started_from": instance.get("started_from"),
        "same_output": max(abs(a - b) for a, b in zip(before, after)) < 1e-5,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--sizes-gb", type=float, nargs="*", default=[1, 16])
    ap.add_argument("--chat", help="SmolLM2's GGUF, or its header (synthetic_gguf.py header)")
    ap.add_argument("--gateway", help="the thaw binary: the gateway's hibernation tier end to end")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    report = {"machine": {"host": platform.node(), "python": sys.version.split()[0], "cpus": os.cpu_count()}}
    step(report, "nvidia_smi", nvidia_smi)
    step(report, "inventory", lambda: inventory(args.worker))
    step(report, "context_creation", lambda: context_creation(args.worker))
    step(report, "copy_ceiling", copy_ceiling)
    uploads = {}
    for gb in args.sizes_gb:
        def one(gb=gb):
            path, made = synthetic_snapshot(args.out, gb)
            try:
                made["thaw_upload"] = upload(args.worker, path)
            finally:
                os.remove(path)
            return made
        step(uploads, f"{gb:g}gb", one)
    report["uploads"] = uploads
    ceiling = report.get("copy_ceiling", {}).get("pinned_gb_per_s")
    for u in uploads.values():
        if isinstance(u, dict) and ceiling and isinstance(u.get("thaw_upload"), dict) and "gb_per_s" in u["thaw_upload"]:
            u["thaw_upload_vs_ceiling"] = round(u["thaw_upload"]["gb_per_s"] / ceiling, 3)
    gpus = report.get("inventory", {}).get("gpus") or []
    if gpus:
        step(report, "standby_activation",
             lambda: standby_activation(args.worker, "cuda:0", ["minilm", "large", "xl"]))
    else:
        # No GPU: the same protocol on the CPU, so the step itself is
        # exercised (the figures are the CPU's, and say so).
        step(report, "standby_activation", lambda: standby_activation(args.worker, "cpu", ["minilm"]))
    hibernation = report.get("inventory", {}).get("hibernation") or {}
    if gpus and hibernation.get("supported"):
        step(report, "hibernate_resume", lambda: hibernate_resume(args.worker, "large"))
    else:
        report["hibernate_resume"] = {
            "skipped": hibernation.get("reason") or "no GPU: nothing to hibernate"}
    if not args.gateway:
        report["gateway_hibernation"] = {"skipped": "no gateway binary given (--gateway)"}
    elif gpus and hibernation.get("supported"):
        step(report, "gateway_hibernation", lambda: gateway_hibernation(args.worker, args.gateway))
    else:
        report["gateway_hibernation"] = {
            "skipped": hibernation.get("reason") or "no GPU: nothing to hibernate"}
    if not args.chat:
        report["smollm2"] = {"skipped": "no SmolLM2 given (--chat: the GGUF or its header)"}
    else:
        # The CPU (thaw's own decoder) in the same run is the baseline.
        chat = {}
        devices = ["cuda:0", "cpu"] if gpus else ["cpu"]
        for device in devices:
            step(chat, device, lambda device=device: chat_decode(args.worker, device, args.chat))
        gpu, cpu = chat.get("cuda:0"), chat.get("cpu")
        if isinstance(gpu, dict) and isinstance(cpu, dict) and gpu.get("decode_tokens_per_s") \
                and cpu.get("decode_tokens_per_s"):
            chat["gpu_vs_cpu_decode"] = round(gpu["decode_tokens_per_s"] / cpu["decode_tokens_per_s"], 2)
            chat["gpu_vs_cpu_four_streams"] = round(
                gpu["four_streams_tokens_per_s"] / cpu["four_streams_tokens_per_s"], 2)
        report["smollm2"] = chat
    with open(os.path.join(args.out, "gpu.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
