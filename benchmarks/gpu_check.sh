#!/usr/bin/env bash
# Proof on a GPU (issue #16): one bounded run that sets up, tests and measures specserve on an NVIDIA GPU and writes
# every figure as JSON and Markdown.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # OUT_DIR: $1, else $OUT, else ./gpu_check_out
#
# Writes OUT_DIR/summary.json, OUT_DIR/summary.md and OUT_DIR/logs.txt (every step's log, one after another), and
# nothing else there: a remote GPU runner may hand back only a few files from $OUT. Scratch (runs, the BentoML store of
# the served model, exported graphs) goes to a temporary folder beside it, removed at the end
# (GPU_CHECK_KEEP_WORK=1 keeps it), so ~/bentoml and the checkout's tracked files are never touched.
#
# Steps, in this order (cheap and decisive first, so a slow step cannot starve them):
#   set-up     bash scripts/setup.sh (CUDA torch where nvidia-smi exists); on a machine that reaches no package
#              registry it fails fast, and the python3 already holding torch is used instead, with wheels from
#              $GPU_CHECK_WHEELS (default .whl/) installed into the scratch folder if there are any
#   (a) tests  pytest tests/cuda -m cuda
#   (c) infer  ResNet-18: onnxruntime CUDA provider (plain run and IO binding) vs torch CUDA eager, batch 1 and 64,
#              and which providers really load (session.get_providers(), never get_available_providers alone)
#   (d) serve  specserve run specs/digits_cnn.yaml, bentoml serve with only classify/digits-cnn, hey (else an
#              aiohttp client) at concurrency 32 and 128, req/s and p99, server stopped
#   (b) train  benchmarks/train_cuda.py, one short round (ResNet-18 first); cut at its limit, the runs it finished
#              still count
#   (e) course benchmarks/course_table.py --only ROWS in a copy of the checkout (it rewrites README.md and
#              BENCHMARKS.md), while the budget lasts
# Without CUDA every CUDA part is skipped with one line and (d) still runs on the CPU: a dry run in a few minutes.
#
# Time: each step runs under `timeout`, capped, and never past the global budget GPU_CHECK_BUDGET_S (default 450 s:
# 8 minutes on one H200 with margin); a failed or timed-out step is recorded and the next one runs.
# Exit status: 0 when no step failed or timed out (skips are fine), 1 otherwise; the summary is written either way.
#
# Knobs: GPU_CHECK_BUDGET_S (450), GPU_CHECK_LOAD_S (10 s per concurrency level), GPU_CHECK_LEVELS (32,128),
#   GPU_CHECK_COURSE_ROWS (lenet,sine), GPU_CHECK_DATA_ROOT (default ../shared/data or ./shared/data if present),
#   GPU_CHECK_WHEELS (.whl), GPU_CHECK_KEEP_WORK (0).
set -u

START_EPOCH=$(date +%s)
SECONDS=0
BUDGET=${GPU_CHECK_BUDGET_S:-450}
RESERVE=15  # seconds kept back for the summary and clean-up

# ----------------------------------------------------------------------------------------------- folders
out_arg=${1:-${OUT:-./gpu_check_out}}
mkdir -p "$out_arg" || { echo "gpu_check: cannot create $out_arg" >&2; exit 2; }
OUT_DIR=$(cd "$out_arg" && pwd)  # absolute, before changing to the repository root
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
LOGS=$WORK/logs
mkdir -p "$LOGS"
STEPS=$WORK/steps.tsv  # name, status, exit code, seconds, note: one line per step, read by the summary
: > "$STEPS"
rm -f "$OUT_DIR/summary.json" "$OUT_DIR/summary.md" "$OUT_DIR/logs.txt"  # a stale summary must not pass for this run
NPROC=$(nproc 2>/dev/null || echo 2)

export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}  # bentoml serve imports service.service from here
export PYTHONUNBUFFERED=1
export BENTOML_HOME=$WORK/bentoml                    # the served model's store: never ~/bentoml
export TORCHINDUCTOR_CACHE_DIR=$WORK/inductor        # torch.compile's cache: cold, like a fresh machine
export MPLBACKEND=Agg

cleanup() {
  # a server left by an interrupted serving step runs in its own session: stop its whole group
  if [ -f "$WORK/server.pgid" ]; then
    kill -TERM -- "-$(cat "$WORK/server.pgid")" 2>/dev/null && sleep 2
    kill -KILL -- "-$(cat "$WORK/server.pgid")" 2>/dev/null
  fi
  if [ "${GPU_CHECK_KEEP_WORK:-0}" = 1 ]; then echo "scratch kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'echo "gpu_check: interrupted"; exit 130' INT TERM

# ----------------------------------------------------------------------------------------------- step runner
record() {  # NAME STATUS RC SECONDS NOTE
  local note=${5//$'\t'/ }
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${note//$'\n'/ }" >> "$STEPS"
}

skip() {  # PART REASON: one clear line, recorded
  echo "skip: $1: $2"
  record "$1" skipped "" 0 "$2"
}

last_line() {  # the last non-empty line of a log, for the summary's note
  grep -v '^[[:space:]]*$' "$1" 2>/dev/null | tail -n 1 | cut -c1-300
}

# run_step NAME CAP MIN CMD...: CMD under `timeout`, at most CAP seconds and never past the budget; skipped when
# fewer than MIN seconds are left. Output goes to $LOGS/NAME.log. Returns CMD's exit status (3 when skipped).
run_step() {
  local name=$1 cap=$2 min=$3
  shift 3
  local avail=$((BUDGET - SECONDS - RESERVE))
  local limit=$((cap < avail ? cap : avail))
  if ((limit < min)); then
    skip "$name" "time budget spent ($((BUDGET - SECONDS)) s of ${BUDGET} s left, needs at least ${min} s)"
    return 3
  fi
  echo "== $name (limit ${limit} s, ${SECONDS} s elapsed)"
  local t0=$SECONDS rc
  timeout -k 10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  local dt=$((SECONDS - t0)) status=ok note=""
  if ((rc == 124 || rc == 137)); then
    status=timeout note="stopped at its ${limit} s limit; last line: $(last_line "$LOGS/$name.log")"
  elif ((rc != 0)); then
    status=failed note="exit $rc; last line: $(last_line "$LOGS/$name.log")"
  fi
  record "$name" "$status" "$rc" "$dt" "$note"
  echo "   $status in ${dt} s${note:+: $note}"
  return "$rc"
}

# ----------------------------------------------------------------------------------------------- python sections
# Written to the scratch folder first so that each runs as one plain command under `timeout`.

cat > "$WORK/probe.py" <<'PY'
"""What this machine and environment are: versions, CUDA, onnxruntime providers, whether specserve imports."""
import json, os, platform, sys

info = {"python": sys.version.split()[0], "python_path": sys.executable, "platform": platform.platform(),
        "cores": os.cpu_count()}
try:
    import torch
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_capability=f"{p.major}.{p.minor}",
                    gpu_memory_gib=round(p.total_memory / 2**30, 1), bf16_supported=torch.cuda.is_bf16_supported(),
                    cudnn=torch.backends.cudnn.version())
except Exception as e:  # noqa: BLE001 - a probe reports, it does not fail
    info.update(torch=None, cuda_available=False, torch_error=f"{type(e).__name__}: {e}")
for name in ("onnxruntime", "bentoml", "pydantic", "onnx", "onnxscript", "aiohttp"):
    try:
        module = __import__(name)
        info[name] = getattr(module, "__version__", "?")
    except Exception as e:  # noqa: BLE001
        info[name] = None
        info[f"{name}_error"] = f"{type(e).__name__}: {e}"
if info.get("onnxruntime"):
    import onnxruntime as ort
    info["ort_available_providers"] = ort.get_available_providers()
# what of specserve imports: training and export need pydantic; the store and the service need bentoml too
for key, modules in (("specserve_train", ("models.train.loop", "models.export.onnx_graph", "models.artifact.runtime")),
                     ("specserve_store", ("models.pipeline", "service.config"))):
    try:
        for module in modules:
            __import__(module)
        info[key] = True
    except Exception as e:  # noqa: BLE001
        info[key] = False
        info[f"{key}_error"] = f"{type(e).__name__}: {e}"
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(json.dumps(info, indent=1))
PY

cat > "$WORK/inference.py" <<'PY'
"""(c) ResNet-18 (specs/resnet18.yaml, initial weights; the exported graph takes uint8 N×96×96×1 pixels and
normalizes inside): onnxruntime with the CUDA provider against torch CUDA eager on the same module, batch 1 and 64.
INFER_DEVICE=cpu smoke-tests this section on a machine without CUDA."""
import copy, ctypes, json, os, statistics, sys, time
from pathlib import Path

import torch  # first: torch loads its CUDA libraries, which onnxruntime's CUDA provider can then find
import numpy as np
import onnxruntime as ort

from models.artifact import runtime
from models.artifact.card import ImageInput, ModelCard
from models.build import build
from models.export.onnx_graph import export_net, graph_module
from models.spec.load import load_spec

out_json, work = Path(sys.argv[1]), Path(sys.argv[2])
device = os.environ.get("INFER_DEVICE", "cuda")
CUDA, TRT, CPU = "CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"
res = {"model": "ResNet-18 (specs/resnet18.yaml, initial weights), uint8 N×96×96×1 input", "device": device,
       "torch": torch.__version__, "onnxruntime": ort.__version__, "available_providers": ort.get_available_providers(),
       "rows": []}


def save():
    out_json.write_text(json.dumps(res, indent=1))


def provider_library() -> str:
    """Whether ORT's CUDA provider library and what it links (cuBLAS, cuDNN, ...) load; the loader's error if not."""
    capi = Path(ort.__file__).parent / "capi"
    try:
        ctypes.CDLL(str(capi / "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(capi / "libonnxruntime_providers_cuda.so"))
        return "loads"
    except OSError as e:
        return f"does not load: {e}"


def open_session(path, providers):
    try:
        s = ort.InferenceSession(str(path), runtime.session_options(), providers=providers)
        return s, s.get_providers(), None
    except Exception as e:  # noqa: BLE001
        return None, [], f"{type(e).__name__}: {e}"[:400]


spec = load_spec(Path("specs/resnet18.yaml"))
net = build(spec, seed=0).eval()
i = spec.input
card = ModelCard(name=spec.name, spec_hash=spec.spec_hash(), task=spec.task, labels=spec.labels,
                 input=ImageInput(channels=i.channels, size=i.size, mean=i.mean, std=i.std))
pixels = np.random.default_rng(0).integers(0, 256, (64, *i.size, i.channels), dtype=np.uint8)  # (N, H, W, C)
began = time.perf_counter()
exported = export_net(net, card, work / "resnet18", example_inputs=pixels[:4])
res["export_s"] = round(time.perf_counter() - began, 1)
path = exported.path

# Which providers really load. The product's own way first (what `bentoml serve` opens), then CUDA asked for
# explicitly; a session that could not set a provider up silently runs without it, so look at get_providers().
service_session = runtime.make_session(path)
res["service_session_providers"] = service_session.get_providers()
in_name, out_name = service_session.get_inputs()[0].name, service_session.get_outputs()[0].name
res["cuda_provider_library"] = provider_library()
session, got, error = open_session(path, [CUDA, CPU])
res["cuda_session_providers"], res["cuda_session_error"] = got, error
if got[:1] != [CUDA] and hasattr(ort, "preload_dlls"):
    # onnxruntime >= 1.21 can load CUDA/cuDNN from the nvidia-* pip packages itself: does that fix it?
    try:
        ort.preload_dlls()
        res["preload_dlls"] = "called"
    except Exception as e:  # noqa: BLE001
        res["preload_dlls"] = f"failed: {type(e).__name__}: {e}"[:300]
    res["cuda_provider_library_after_preload"] = provider_library()
    session, got, error = open_session(path, [CUDA, CPU])
    res["cuda_session_providers_after_preload"], res["cuda_session_error_after_preload"] = got, error
res["cuda_provider_used"] = got[:1] == [CUDA]

# TensorRT: only whether it loads, on a one-op graph (building engines for ResNet-18 would take the whole budget)
if TRT in ort.get_available_providers():
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])])
    tiny = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    tiny.ir_version = 9
    onnx.save(tiny, str(work / "relu.onnx"))
    trt, trt_got, trt_error = open_session(work / "relu.onnx", [TRT, CUDA, CPU])
    if trt is not None:
        try:
            trt.run(None, {"x": np.ones((4, 4), np.float32)})  # engines are built on the first run
        except Exception as e:  # noqa: BLE001
            trt_error = f"{type(e).__name__}: {e}"[:400]
    res["tensorrt_session_providers"], res["tensorrt_error"] = trt_got, trt_error
    res["tensorrt_provider_used"] = trt_got[:1] == [TRT]
else:
    res["tensorrt_provider_used"] = False
    res["tensorrt_error"] = "not in get_available_providers() of this onnxruntime build"
save()

# ------------------------------------------------------------------ timings
cuda = device.startswith("cuda")
sync = torch.cuda.synchronize if cuda else (lambda: None)
REPEATS, WARMUP = (5, 10) if cuda else (2, 1)  # a CPU smoke test only shows that this section works


def per_call_ms(fn, calls: int) -> float:
    """Median over REPEATS of the mean wall time of `calls` back-to-back calls, after WARMUP calls."""
    for _ in range(WARMUP):
        fn()
    sync()
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        times.append((time.perf_counter() - t0) / calls * 1000)
    return statistics.median(times)


def row(name: str, batch: int, ms: float, **extra) -> None:
    res["rows"].append({"runtime": name, "batch": batch, "ms_per_call": round(ms, 3),
                        "images_per_s": round(batch / ms * 1000, 1), **extra})
    print(f"{name:<48} batch {batch:>3}: {ms:8.3f} ms/call  {batch / ms * 1000:10,.0f} images/s", flush=True)
    save()


module = graph_module(copy.deepcopy(net), exported.card).to(device)  # exactly what the graph computes
for batch in (1, 64):
    calls = (50 if batch == 1 else 20) if cuda else 2
    x = torch.from_numpy(pixels[:batch]).to(device)
    with torch.inference_mode():
        reference = module(x).float().cpu().numpy()
        row(f"torch {device} eager fp32", batch, per_call_ms(lambda: module(x), calls))
        if cuda:
            def bf16():
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return module(x)
            row("torch cuda eager, bf16 autocast", batch, per_call_ms(bf16, calls))
    if not res["cuda_provider_used"]:
        continue
    feed = {in_name: pixels[:batch]}
    answer = session.run(None, feed)[0]
    row("onnxruntime CUDA provider, numpy in/out", batch, per_call_ms(lambda: session.run(None, feed), calls),
        max_abs_diff_vs_torch=float(np.abs(answer - reference).max()))
    binding = session.io_binding()  # input copied to the GPU once, output left there: the provider's own speed
    binding.bind_ortvalue_input(in_name, ort.OrtValue.ortvalue_from_numpy(pixels[:batch], "cuda", 0))
    binding.bind_output(out_name, "cuda")

    def bound():
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
    row("onnxruntime CUDA provider, IO binding", batch, per_call_ms(bound, calls))
if not res["cuda_provider_used"]:
    res["note"] = "onnxruntime's CUDA provider did not load: only torch was timed"
save()
print(json.dumps({k: v for k, v in res.items() if k != "rows"}, indent=1))
PY

cat > "$WORK/serve.py" <<'PY'
"""(d) bentoml serve with only classify/digits-cnn (the newest stored version), loaded at each concurrency for a
fixed time by hey when installed, else by an aiohttp client; req/s, p50, p99 and errors; the server is stopped."""
import asyncio, io, json, os, re, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path

out_json, work = Path(sys.argv[1]), Path(sys.argv[2])
seconds = float(os.environ.get("GPU_CHECK_LOAD_S", "10"))
levels = [int(c) for c in os.environ.get("GPU_CHECK_LEVELS", "32,128").split(",")]
cores = os.cpu_count() or 2
workers = 2 if cores < 8 else 4  # the shipped serving.yaml's 2 on small machines; more cores feed more workers
res = {"model": "digits-cnn (specs/digits_cnn.yaml, trained by `specserve run`)", "endpoint": "/classify",
       "workers": workers, "threads": 1, "batching": {"max_batch_size": 32, "max_wait_ms": 0},
       "seconds_per_level": seconds, "levels": []}
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` stops this step: still stop the server


def save():
    out_json.write_text(json.dumps(res, indent=1))


def digit_png() -> bytes:
    """A real handwritten digit (scikit-learn's digits), upscaled to 32×32, as PNG."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    pixels = np.rint(load_digits().images[0] * 255 / 16).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((32, 32), Image.Resampling.NEAREST).save(buffer, format="PNG")
    return buffer.getvalue()


BOUNDARY = "gpucheckboundary"
png = digit_png()
body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"digit.png\"\r\n"
        f"Content-Type: image/png\r\n\r\n").encode() + png + (
        f"\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n3\r\n--{BOUNDARY}--\r\n").encode()
(work / "body.bin").write_bytes(body)
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"

# JSON is YAML: a serving config like service/serving.yaml with only the classify endpoint
config = work / "serving.yaml"
config.write_text(json.dumps({"endpoints": {"classify": {"models": ["digits-cnn"], "default": "digits-cnn",
                                                         "batching": res["batching"]}},
                              "workers": workers, "threads": 1, "intra_op_threads": "auto", "timeout_s": 60}))
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
base = f"http://127.0.0.1:{port}"
log = open(work / "server.log", "wb")
server = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "service.service:SpecServe", "--host", "127.0.0.1",
                           "--port", str(port)], env={**os.environ, "SPECSERVE_CONFIG": str(config)},
                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
(work / "server.pgid").write_text(str(server.pid))  # the script's clean-up stops the group if this step is killed


def post(path: str, data: bytes, content_type: str) -> tuple[int, bytes]:
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=30) as r:
        return r.status, r.read()


def hey(concurrency: int) -> dict:
    done = subprocess.run(["hey", "-z", f"{seconds:g}s", "-c", str(concurrency), "-m", "POST", "-T", CONTENT_TYPE,
                           "-D", str(work / "body.bin"), base + "/classify"],
                          capture_output=True, text=True, timeout=seconds + 60)
    text = done.stdout
    print(text, flush=True)
    grab = lambda pattern: float(m.group(1)) if (m := re.search(pattern, text)) else float("nan")
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", text)}
    failures = text.split("Error distribution:", 1)[1] if "Error distribution:" in text else ""  # refused, reset...
    errors = sum(n for c, n in codes.items() if c != 200) + sum(
        int(n) for n in re.findall(r"^\s*\[(\d+)\]\s+\S", failures, re.M))
    return {"client": "hey", "req_per_s": grab(r"Requests/sec:\s+([\d.]+)"),
            "p50_ms": grab(r"50% in ([\d.]+) secs") * 1000, "p99_ms": grab(r"99% in ([\d.]+) secs") * 1000,
            "requests": codes.get(200, 0), "errors": errors, "status_codes": codes}


async def aiohttp_load(concurrency: int, warmup: float = 1.0) -> dict:
    """`concurrency` clients posting the PNG back to back; only what starts after `warmup` and ends in time counts."""
    import aiohttp

    latencies, errors = [], 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def client(http):
        nonlocal errors
        while (sent := time.perf_counter()) < stop_at:
            try:
                async with http.post(base + "/classify", data=body, headers={"Content-Type": CONTENT_TYPE}) as r:
                    await r.read()
                    ok = r.status == 200
            except aiohttp.ClientError:
                ok = False
            finished = time.perf_counter()
            if sent >= measure_from and finished <= stop_at:
                if ok:
                    latencies.append(1000 * (finished - sent))
                else:
                    errors += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")
    return {"client": "aiohttp (hey not installed)", "req_per_s": len(latencies) / seconds, "p50_ms": pick(0.50),
            "p99_ms": pick(0.99), "requests": len(latencies), "errors": errors}


try:
    began, deadline = time.perf_counter(), time.monotonic() + 120
    while True:
        if server.poll() is not None:
            raise SystemExit(f"bentoml serve exited with {server.returncode} before it was ready; see server.log below")
        if time.monotonic() > deadline:
            raise SystemExit("bentoml serve not ready after 120 s; see server.log below")
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        time.sleep(0.3)
    res["ready_s"] = round(time.perf_counter() - began, 1)
    _, answer = post("/models", b"{}", "application/json")
    served = json.loads(answer)["endpoints"]["classify"]["models"][0]
    res["tag"], res["server_providers"] = served["tag"], served["providers"]  # what the server's sessions really use
    status, answer = post("/classify", body, CONTENT_TYPE)
    res["sanity"] = {"status": status, "top": json.loads(answer)["results"][0]["top"][0]}
    print(f"ready in {res['ready_s']} s: {res['tag']} on {res['server_providers']}; one request: {res['sanity']}")
    save()
    if shutil.which("hey") is None:
        print("skip: hey: not installed (`command -v hey` found nothing); load from an aiohttp client instead",
              flush=True)
        res["hey"] = "not installed"
    for concurrency in levels:
        level = hey(concurrency) if shutil.which("hey") else asyncio.run(aiohttp_load(concurrency))
        level["concurrency"] = concurrency
        res["levels"].append(level)
        print(f"c={concurrency:<4} {level['req_per_s']:8.0f} req/s  p50 {level['p50_ms']:7.1f} ms  "
              f"p99 {level['p99_ms']:7.1f} ms  errors {level['errors']}  ({level['client']})", flush=True)
        save()
finally:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    (work / "server.pgid").unlink(missing_ok=True)
    res["server_stopped"] = server.poll() is not None
    save()
    log.close()
    print("---- server.log (last 40 lines)")
    print("\n".join((work / "server.log").read_text(errors="replace").splitlines()[-40:]))
PY

cat > "$WORK/summary.py" <<'PY'
"""summary.json and summary.md from what the steps left in the scratch folder (standard library only)."""
import json, re, sys, xml.etree.ElementTree as ET
from pathlib import Path

work, out, elapsed, budget, started = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
command = sys.argv[6]


def load(name):
    path = work / name
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        return None


steps = []
for line in (work / "steps.tsv").read_text().splitlines():
    name, status, rc, seconds, note = (line.split("\t") + [""] * 5)[:5]
    steps.append({"name": name, "status": status, "exit": int(rc) if rc else None, "seconds": int(seconds or 0),
                  "note": note})
by_name = {s["name"]: s for s in steps}
env = load("env.json") or {}

# (a) pytest's junit file: counts and the first line of each failure
tests = None
if (work / "pytest.xml").is_file():
    root = ET.parse(work / "pytest.xml").getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    cases = []
    for case in suite.iter("testcase"):
        outcome, message = "passed", ""
        for kind, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            node = case.find(kind)
            if node is not None:
                outcome, message = name, ((node.get("message") or "").splitlines() or [""])[0][:400]
        cases.append({"test": case.get("name"), "outcome": outcome, "seconds": float(case.get("time", 0)),
                      "message": message})
    tests = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    tests["cases"] = cases

# (b) train_cuda.py's per-run lines (kept even when the step was cut at its limit)
train = None
log = work / "logs" / "train_cuda.log"
if log.is_file():
    pattern = re.compile(r"round (\d+)\s+(\S+) (.+?)\s+([\d,.]+) samples/s\s+first epoch\s+([\d.]+) s\s+peak\s+([\d,.]+|nan) MiB")
    runs = [{"round": int(r), "model": m, "configuration": c.strip(), "samples_per_s": float(s.replace(",", "")),
             "first_epoch_s": float(f), "peak_mib": None if p == "nan" else float(p.replace(",", ""))}
            for r, m, c, s, f, p in pattern.findall(log.read_text(errors="replace"))]
    base = {r["model"]: r["samples_per_s"] for r in runs if r["configuration"] == "fp32"}
    for r in runs:
        r["vs_fp32"] = round(r["samples_per_s"] / base[r["model"]], 2) if r["model"] in base else None
    train = {"runs": runs, "complete": by_name.get("train_cuda", {}).get("status") == "ok"}

inference, serving = load("inference.json"), load("serve.json")
course = (work / "course.md").read_text() if (work / "course.md").is_file() else None
failed = [s["name"] for s in steps if s["status"] in ("failed", "timeout")]
summary = {"started": started, "seconds": elapsed, "budget_s": budget, "command": command, "exit": 1 if failed else 0,
           "failed_steps": failed, "machine": env, "steps": steps, "tests": tests, "train_cuda": train,
           "inference": inference, "serving": serving, "course_table_md": course}
(out / "summary.json").write_text(json.dumps(summary, indent=1))


# ------------------------------------------------------------------ Markdown
def table(header, rows, align):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def num(x, digits=0):
    return "–" if x is None or x != x else f"{x:,.{digits}f}"


gpu = env.get("gpu") or "no CUDA device"
md = [f"# GPU check: {gpu}", "",
      f"`{command}`, started {started}, {elapsed} s of a {budget} s budget; "
      + (f"**failed or timed out: {', '.join(failed)}**." if failed else "no step failed."), ""]
facts = [f"python {env.get('python')} ({env.get('python_path')})", (f"torch {env['torch']} ({'CUDA ' + env['torch_cuda'] if env.get('torch_cuda') else 'a CPU build'})"
          if env.get("torch") else f"no torch ({env.get('torch_error')})"),
         f"onnxruntime {env.get('onnxruntime')}", f"bentoml {env.get('bentoml')}", f"{env.get('cores')} cores"]
if env.get("gpu"):
    facts.insert(0, f"{env['gpu']} (compute {env.get('gpu_capability')}, {env.get('gpu_memory_gib')} GiB, "
                    f"bf16 {'yes' if env.get('bf16_supported') else 'no'}, cuDNN {env.get('cudnn')})")
if (work / "nvidia-smi.txt").is_file():
    facts.append("nvidia-smi: " + " / ".join((work / "nvidia-smi.txt").read_text().split("\n")[:2]).strip(" /"))
md += ["Machine: " + "; ".join(facts) + ".", ""]
if (work / "setup.txt").is_file():
    md += ["Set-up: " + (work / "setup.txt").read_text().strip(), ""]
md += ["## Steps", "", table(["step", "status", "seconds", "note"],
                             [[s["name"], s["status"], s["seconds"], s["note"].replace("|", "\\|")] for s in steps],
                             "llrl"), ""]

md += ["## (a) CUDA tests: `pytest tests/cuda -m cuda`", ""]
if tests:
    md += [f"{tests['passed']} passed, {tests['failed']} failed, {tests['error']} errors, {tests['skipped']} skipped.", "",
           table(["test", "outcome", "s", "message"],
                 [[c["test"], c["outcome"], f"{c['seconds']:.1f}", c["message"].replace("|", "\\|")] for c in tests["cases"]],
                 "llrl"), ""]
else:
    md += [f"Not run: {by_name.get('pytest', {}).get('note', 'no result')}.", ""]

md += ["## (b) Training throughput: `benchmarks/train_cuda.py`", ""]
if train and train["runs"]:
    md += [("One round" if train["complete"] else "**Cut at its limit**: the runs it finished") +
           " of 2 epochs per configuration, the first (cuDNN warm-up, torch.compile's compilation) dropped; "
           "synthetic Fashion-MNIST-shaped data unless ../shared/data was there; batch from the specs (256).", "",
           table(["model", "configuration", "samples/s", "vs fp32", "first epoch s (incl. compile)", "peak MiB"],
                 [[r["model"], r["configuration"], num(r["samples_per_s"]), num(r["vs_fp32"], 2),
                   num(r["first_epoch_s"], 1), num(r["peak_mib"])] for r in train["runs"]], "llrrrr"), ""]
else:
    md += [f"Not measured: {by_name.get('train_cuda', {}).get('note', 'no result')}.", ""]

md += ["## (c) Inference: onnxruntime CUDA provider vs torch CUDA eager (ResNet-18)", ""]
if inference:
    yes = lambda b: "**yes**" if b else "**no**"
    md += [f"- CUDAExecutionProvider really used: {yes(inference.get('cuda_provider_used'))} "
           f"(session.get_providers() = {inference.get('cuda_session_providers_after_preload', inference.get('cuda_session_providers'))}; "
           f"provider library {inference.get('cuda_provider_library')}"
           + (f"; after ort.preload_dlls(): {inference.get('cuda_provider_library_after_preload')}"
              if "cuda_provider_library_after_preload" in inference else "") + ")",
           f"- the service's own session (models.artifact.runtime.make_session) got "
           f"{inference.get('service_session_providers')}",
           f"- TensorrtExecutionProvider really used: {yes(inference.get('tensorrt_provider_used'))} "
           f"({inference.get('tensorrt_session_providers', '')} {inference.get('tensorrt_error') or ''}".rstrip() + ")",
           f"- get_available_providers() = {inference.get('available_providers')} (a list of what the build "
           f"contains, not of what works)", ""]
    if inference.get("rows"):
        md += [f"{inference.get('model')}; fp32 unless named; per call: median of 5 repeats of back-to-back calls "
               "after 10 warm-up calls. torch and onnxruntime both use TF32 convolutions on the GPU (their defaults).", "",
               table(["runtime", "batch", "ms / call", "images/s", "max abs diff vs torch"],
                     [[r["runtime"], r["batch"], num(r["ms_per_call"], 3), num(r["images_per_s"]),
                       f"{r['max_abs_diff_vs_torch']:.2e}" if "max_abs_diff_vs_torch" in r else ""]
                      for r in inference["rows"]], "lrrrr"), ""]
    if inference.get("note"):
        md += [inference["note"] + ".", ""]
else:
    md += [f"Not measured: {by_name.get('inference', {}).get('note', 'no result')}.", ""]

md += ["## (d) Serving: `bentoml serve`, classify with digits-cnn", ""]
if serving and serving.get("tag"):
    md += [f"{serving['tag']}: {serving['workers']} worker(s) × {serving['threads']} thread(s), batching "
           f"{serving['batching']}; ready in {serving.get('ready_s')} s; the server's sessions use "
           f"{serving.get('server_providers')}; {serving['seconds_per_level']:g} s per level; one multipart 32×32 PNG "
           f"per request, k=3; loopback. Server stopped: {serving.get('server_stopped')}.", ""]
    if serving.get("hey") == "not installed":
        md += ["hey is not installed here: the figures below come from an aiohttp client (same request, same "
               "seconds per level; latency = send to full answer).", ""]
    if serving["levels"]:
        md += [table(["client", "concurrency", "req/s", "p50 ms", "p99 ms", "requests", "errors"],
                     [[lv["client"], lv["concurrency"], num(lv["req_per_s"]), num(lv["p50_ms"], 1), num(lv["p99_ms"], 1),
                       lv["requests"], lv["errors"]] for lv in serving["levels"]], "lrrrrrr"), ""]
else:
    note = by_name.get("serve", by_name.get("serve_model", {})).get("note", "no result")
    md += [f"Not measured: {note}.", ""]

md += ["## (e) Course table rows: `benchmarks/course_table.py --only ROWS`", ""]
md += [course.strip(), ""] if course else [f"Not run: {by_name.get('course', {}).get('note', 'no result')}.", ""]
md += ["Logs of every step: logs.txt beside this file."]
(out / "summary.md").write_text("\n".join(md) + "\n")
PY

# ----------------------------------------------------------------------------------------------- set-up
echo "gpu_check: out $OUT_DIR, scratch $WORK, budget ${BUDGET} s"
if command -v nvidia-smi > /dev/null 2>&1; then
  timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$WORK/nvidia-smi.txt" 2>&1
  timeout 20 nvidia-smi > "$LOGS/nvidia-smi.log" 2>&1
fi

# PIP_RETRIES/PIP_DEFAULT_TIMEOUT: where no package registry answers (an offline GPU box), pip gives up in seconds
# instead of retrying for minutes; a CUDA torch download from a registry that answers still fits in the cap.
PIP_RETRIES=1 PIP_DEFAULT_TIMEOUT=20 run_step setup 240 30 bash scripts/setup.sh
setup_rc=$?
PY=""
if [ "$setup_rc" = 0 ] && [ -x .venv/bin/python ]; then
  PY=$ROOT/.venv/bin/python
  echo "the project's .venv, made by scripts/setup.sh" > "$WORK/setup.txt"
else
  # No registry: the python3 that already holds torch (a GPU image's CUDA torch, onnx, onnxruntime, ...), plus
  # wheels brought along for what it lacks (pydantic and bentoml with their dependencies), installed into scratch.
  for candidate in python3 python; do
    if command -v "$candidate" > /dev/null 2>&1 && "$candidate" -c "import torch" > /dev/null 2>&1; then
      PY=$(command -v "$candidate")
      break
    fi
  done
  PY=${PY:-python3}
  wheels=${GPU_CHECK_WHEELS:-$ROOT/.whl}
  how="scripts/setup.sh failed (exit $setup_rc; see logs.txt); using $PY with its own packages"
  if compgen -G "$wheels/*.whl" > /dev/null; then
    run_step wheels 90 10 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$WORK/site" "$wheels"/*.whl
    export PYTHONPATH=$WORK/site:$PYTHONPATH
    how="$how, plus the wheels in $wheels"
  else
    how="$how (no wheels in $wheels to add)"
  fi
  echo "$how" > "$WORK/setup.txt"
fi
echo "   python: $PY"
run_step probe 60 10 "$PY" "$WORK/probe.py" "$WORK/env.json"

probe() {  # KEY: one value from env.json ("" when absent)
  "$PY" -c "import json,sys; v=json.load(open(sys.argv[1])).get(sys.argv[2]); print('' if v is None else v)" \
    "$WORK/env.json" "$1" 2> /dev/null
}
if [ "$setup_rc" != 0 ] && [ -n "$(probe torch)" ]; then
  # setup.sh failed but a python with torch carries on: the step is a fallback, not a failure of the check
  sed -i "s/^setup\tfailed\t/setup\tfallback\t/; s/^setup\ttimeout\t/setup\tfallback\t/" "$STEPS"
fi
HAS_CUDA=0
if [ "$(probe cuda_available)" = True ]; then
  HAS_CUDA=1
  NO_CUDA=""
elif [ -z "$(probe torch)" ]; then
  NO_CUDA="torch does not import ($(probe torch_error))"
else
  NO_CUDA="no CUDA device (torch.cuda.is_available() is False)"
fi
# can_run PART NEEDS_CUDA(0|1) NEEDS(train|store): true when PART can run here, else its one skip line
can_run() {
  if [ "$2" = 1 ] && [ "$HAS_CUDA" = 0 ]; then skip "$1" "$NO_CUDA"; return 1; fi
  if [ "$(probe "specserve_$3")" != True ]; then
    skip "$1" "specserve does not import here ($(probe "specserve_$3_error")); see Set-up"
    return 1
  fi
  return 0
}

# ----------------------------------------------------------------------------------------------- (a) CUDA tests
if can_run pytest 1 train; then
  run_step pytest 150 45 "$PY" -m pytest tests/cuda -m cuda -q -p no:cacheprovider --junitxml="$WORK/pytest.xml"
fi

# ----------------------------------------------------------------------------------------------- (c) inference
if can_run inference 1 train; then
  run_step inference 100 40 "$PY" "$WORK/inference.py" "$WORK/inference.json" "$WORK"
fi

# ----------------------------------------------------------------------------------------------- (d) serving
# Not a CUDA part: on a GPU machine the server's onnxruntime sessions use CUDA where it really loads; without one
# this proves the same line (train, export with parity, store, serve, load) on the CPU.
if can_run serve 0 store; then
  if ! command -v hey > /dev/null 2>&1; then
    skip hey "not installed (command -v hey found nothing); the serving load comes from an aiohttp client instead"
  fi
  if run_step serve_model 120 30 "$PY" -m models.cli run specs/digits_cnn.yaml --runs "$WORK/runs" --quiet; then
    run_step serve 150 50 "$PY" "$WORK/serve.py" "$WORK/serve.json" "$WORK"
  else
    skip serve "no stored digits-cnn (serve_model did not finish)"
  fi
fi

# ----------------------------------------------------------------------------------------------- (b) training
# ResNet-18 first: it is the workload a GPU is for; LeNet's runs come after it while the limit lasts. One round of
# 2 epochs × 30 steps per configuration; the first epoch (and torch.compile's compilation) is reported apart.
if can_run train_cuda 1 train; then
  run_step train_cuda 180 60 "$PY" benchmarks/train_cuda.py resnet18 lenet --rounds 1 --epochs 2 --steps 30 \
    --test-count 512 --no-write
fi

# ----------------------------------------------------------------------------------------------- (e) course rows
# course_table.py writes README.md, BENCHMARKS.md and benchmarks/figures/: it runs in a copy of the checkout, and
# only its table comes back. Rows that need Fashion-MNIST are skipped by it when no data root is there.
if can_run course 1 train; then
  data_root=${GPU_CHECK_DATA_ROOT:-}
  for candidate in "$ROOT/../shared/data" "$ROOT/shared/data"; do
    [ -z "$data_root" ] && [ -d "$candidate" ] && data_root=$(cd "$candidate" && pwd)
  done
  data_root=${data_root:-$WORK/no-data}
  copy=$WORK/course_repo
  mkdir -p "$copy" && cp -a benchmarks models service specs README.md BENCHMARKS.md "$copy"/
  (cd "$copy" && PYTHONPATH=$copy:$PYTHONPATH run_step course 240 30 "$PY" benchmarks/course_table.py \
    --only "${GPU_CHECK_COURSE_ROWS:-lenet,sine}" --data-root "$data_root" --threads "$NPROC")
  course_rc=$?
  if [ "$course_rc" = 124 ] || [ "$course_rc" = 137 ]; then  # cut: the table of the rows that did finish
    (cd "$copy" && PYTHONPATH=$copy:$PYTHONPATH run_step course_table 30 10 "$PY" benchmarks/course_table.py --table-only)
  fi
  "$PY" - "$copy/README.md" "$WORK/course.md" <<'PY' 2> /dev/null
import sys
text = open(sys.argv[1]).read()
begin, end = "<!-- course_results:begin -->", "<!-- course_results:end -->"
if begin in text and end in text:
    open(sys.argv[2], "w").write(text[text.index(begin) + len(begin):text.index(end)].strip() + "\n")
PY
fi

# ----------------------------------------------------------------------------------------------- summary
# One file of logs, in the order the steps ran (a remote runner may hand back only a few files).
for name in nvidia-smi $(cut -f1 "$STEPS"); do
  [ -f "$LOGS/$name.log" ] || continue
  printf '\n===== %s =====\n' "$name"
  tail -n 3000 "$LOGS/$name.log"
done > "$OUT_DIR/logs.txt"
summary_py=$PY
"$summary_py" -c "" 2> /dev/null || summary_py=python3
"$summary_py" "$WORK/summary.py" "$WORK" "$OUT_DIR" "$SECONDS" "$BUDGET" "$(date -u -d "@$START_EPOCH" '+%Y-%m-%d %H:%M UTC')" \
  "bash benchmarks/gpu_check.sh $OUT_DIR" || echo "gpu_check: the summary could not be written (see above)"
echo
cat "$OUT_DIR/summary.md" 2> /dev/null
echo
echo "gpu_check: ${SECONDS} s; summary.json, summary.md and logs.txt in $OUT_DIR"
# 1 when a step failed or timed out (column 2 of steps.tsv); skips do not count
awk -F'\t' '$2 == "failed" || $2 == "timeout" { bad = 1 } END { exit bad ? 1 : 0 }' "$STEPS"
