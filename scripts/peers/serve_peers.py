"""`wick serve` next to the ONNX Runtime peer server (server_ort.py: FastAPI + uvicorn + ONNX
Runtime doing the same pre- and post-processing) for one model and one photo, alternated over R
rounds in one sitting. Run through scripts/bench-serve-peers.sh, which prepares the venv, the
packages, the ONNX files and the photos.

Per round and server: start it, time /ping's first 200 (cold start), keep its answers to the
photo and to a PNG of the photo's decoded pixels, warm up (`hey` 3 s at 4 clients), then `hey -z DURATION` at 1 client and at 16 clients, POSTing the photo
to /invocations (with the scenario's X-Amzn-SageMaker-Custom-Attributes, if any); then the peak
RSS (VmHWM) of the server and any child processes, and stop it. Rounds alternate which server
goes first (ABBA...), so slow drift weighs on both alike.

Printed: every round's row, the medians per server, and the ratios wick / ORT (median of the
per-round ratios): 16-client req/s, 1-client p50, peak RSS. A non-200 answer anywhere, or answers
to the PNG that differ between the servers (then they do not do the same work: JPEG decoders may
differ, decoded pixels must not be read differently), fails the run (exit 1): its rows are
printed, no ratio is.
"""
import argparse
import datetime
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"


class Failure(Exception):
    """A step failed: the run stops and prints no ratio."""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, image, attributes, content_type="image/jpeg", timeout=120):
    headers = {"Content-Type": content_type}
    if attributes:
        headers[ATTRIBUTES_HEADER] = attributes
    request = urllib.request.Request(url, data=image, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_ready(port, proc, timeout=180):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise Failure(f"the server exited with {proc.returncode} before answering /ping")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except OSError:
            time.sleep(0.01)
    raise Failure(f"no /ping 200 on port {port} within {timeout} s")


def hey(url, image_path, clients, duration, attributes):
    cmd = ["hey", "-z", duration, "-c", str(clients), "-m", "POST", "-T", "image/jpeg", "-D", image_path]
    if attributes:
        cmd += ["-H", f"{ATTRIBUTES_HEADER}: {attributes}"]
    proc = subprocess.run(cmd + [url], capture_output=True, text=True)
    out = proc.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if proc.returncode != 0 or not rps:
        raise Failure(f"`{' '.join(cmd)} {url}` failed ({proc.returncode}):\n{out}\n{proc.stderr}")
    codes = {int(a): int(b) for a, b in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}
    # Transport errors (resets, time-outs) are listed apart from the status codes.
    error_block = re.search(r"Error distribution:\n((?:[ \t]+\[\d+\].*\n?)+)", out)
    errors = sum(int(n) for n in re.findall(r"\[(\d+)\]", error_block.group(1))) if error_block else 0
    ok = codes.get(200, 0)
    slowest = re.search(r"Slowest:\s+([\d.]+) secs", out)
    p50 = re.search(r"\b50% in ([\d.]+) secs", out)
    # hey leaves the 99% line out (prints "0% in") below 100 requests; the nearest-rank 99th
    # percentile of fewer than 100 samples is the slowest one.
    p99 = re.search(r"\b99% in ([\d.]+) secs", out) or slowest
    if ok == 0 or not p50 or not p99:
        raise Failure(f"no successful request in `hey` at {clients} clients:\n{out}")
    return {
        "clients": clients,
        "requests": ok + sum(n for code, n in codes.items() if code != 200) + errors,
        "rps": float(rps.group(1)),
        "p50_ms": 1e3 * float(p50.group(1)),
        "p99_ms": 1e3 * float(p99.group(1)),
        "ok": ok,
        "non_200": sum(n for code, n in codes.items() if code != 200) + errors,
    }


def descendants(pid):
    """pid and every process below it (from /proc's parent links)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def peak_rss_mb(pid):
    """Sum of VmHWM (peak resident set) over the server process and its children."""
    total_kb = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                total_kb += next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        except (OSError, StopIteration):
            pass
    return total_kb / 1024


def stop(proc):
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def server_command(args, which, port):
    if which == "wick":
        env = dict(os.environ, SAGEMAKER_BIND_TO_PORT=str(port), RUST_LOG="warn")
        return [args.wick, "serve", "--model-dir", args.package], env
    env = dict(os.environ, PEER_TASK=args.task, PEER_ONNX=args.onnx, PEER_PACKAGE=args.package,
               PEER_THREADS=str(args.threads))
    return [sys.executable, "-m", "uvicorn", "server_ort:app", "--app-dir", os.path.dirname(os.path.abspath(__file__)),
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"], env


def measure(args, which, image, png):
    port = free_port()
    cmd, env = server_command(args, which, port)
    log = open(os.path.join(args.log_dir, f"{which}.log"), "ab")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        cold = wait_ready(port, proc)
        url = f"http://127.0.0.1:{port}/invocations"
        answer = {}
        for kind, data, content_type in (("jpeg", image, "image/jpeg"), ("png", png, "image/png")):
            status, body = post(url, data, args.attributes, content_type)
            if status != 200:
                raise Failure(f"{which} answered {status} to the first {kind} request: {body[:500]!r}")
            answer[kind] = json.loads(body)
        hey(url, args.image, 4, "3s", args.attributes)  # warm-up
        one = hey(url, args.image, 1, args.duration, args.attributes)
        sixteen = hey(url, args.image, 16, args.duration, args.attributes)
        if proc.poll() is not None:
            raise Failure(f"{which} exited during the load")
        rss = peak_rss_mb(proc.pid)
    except Failure as e:
        raise Failure(f"{which}: {e} (server log: {log.name})") from e
    finally:
        stop(proc)
        log.close()
    return {"server": which, "cold_s": cold, "one": one, "sixteen": sixteen, "rss_mb": rss}, answer


def summarise_answer(task, answer):
    """A short comparable digest of one answer (to check both servers do the same work)."""
    if task == "classification":
        return f"top-1 {answer[0]['label']} ({answer[0]['score']:.3f})"
    if task == "segmentation":
        return "classes " + ", ".join(f"{e['label']} {e['pixels']} px" for e in answer)
    return f"{len(answer)} boxes" + (f", best {answer[0]['label']} {answer[0]['score']:.3f}" if answer else "")


def answers_agree(task, a, b):
    """Whether two answers to the same decoded pixels agree up to float rounding."""
    if task == "classification":
        return a[0]["label"] == b[0]["label"] and abs(a[0]["score"] - b[0]["score"]) < 1e-3
    if task == "segmentation":
        pa = {e["label"]: e["pixels"] for e in a}
        pb = {e["label"]: e["pixels"] for e in b}
        total = max(sum(pa.values()), 1)
        # Pixels at near-ties between two classes may flip: 0.1% of the image at most.
        return sum(abs(pa.get(k, 0) - pb.get(k, 0)) for k in set(pa) | set(pb)) / 2 <= 0.001 * total
    # Boxes at the threshold may come and go: one at most, and the same best box.
    return abs(len(a) - len(b)) <= 1 and (not a or not b or a[0]["label"] == b[0]["label"])


def png_twin(image_path, directory):
    """The photo as Pillow decodes it, saved losslessly: both servers then see the same pixels
    (JPEG decoders differ by a level here and there, which flips near-tied outputs)."""
    from PIL import Image

    path = os.path.join(directory, "photo-as-decoded.png")
    with Image.open(image_path) as img:
        img.convert("RGB").save(path, format="PNG")
    with open(path, "rb") as f:
        return f.read()


def run(args):
    with open(args.image, "rb") as f:
        image = f.read()
    png = png_twin(args.image, args.log_dir)
    rounds, answers = [], {}
    for r in range(args.rounds):
        order = ("wick", "ort") if r % 2 == 0 else ("ort", "wick")
        row = {}
        for which in order:
            print(f"  round {r + 1}/{args.rounds}: {which} ...", file=sys.stderr, flush=True)
            row[which], answers[which] = measure(args, which, image, png)
        rounds.append(row)
    return rounds, answers


def fmt_row(label, m):
    return (f"| {label} | {m['cold_s']:.2f} | {m['one']['rps']:.1f} | {m['one']['p50_ms']:.1f} | "
            f"{m['one']['p99_ms']:.1f} | {m['sixteen']['rps']:.1f} | {m['sixteen']['p50_ms']:.1f} | "
            f"{m['sixteen']['p99_ms']:.1f} | {m['rss_mb']:.0f} | {m['one']['non_200'] + m['sixteen']['non_200']} |")


def median_row(rows):
    med = statistics.median
    return {
        "cold_s": med(m["cold_s"] for m in rows),
        "one": {k: med(m["one"][k] for m in rows) for k in ("rps", "p50_ms", "p99_ms")} | {"non_200": sum(m["one"]["non_200"] for m in rows)},
        "sixteen": {k: med(m["sixteen"][k] for m in rows) for k in ("rps", "p50_ms", "p99_ms")} | {"non_200": sum(m["sixteen"]["non_200"] for m in rows)},
        "rss_mb": med(m["rss_mb"] for m in rows),
    }


def report(args, rounds, answers):
    from importlib.metadata import version

    import onnxruntime

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"wick serve vs FastAPI + ONNX Runtime, scenario {args.scenario}, {date}; {args.cpu}, "
          f"{os.cpu_count()} cores; onnxruntime {onnxruntime.__version__} ({args.threads} intra-op threads), "
          f"fastapi {version('fastapi')}, uvicorn {version('uvicorn')} (1 process); "
          f"wick {args.commit}; image {args.image} ({os.path.getsize(args.image) // 1024} KB"
          f", {image_size(args.image)}); hey -z {args.duration}"
          f"{'; ' + ATTRIBUTES_HEADER + ': ' + args.attributes if args.attributes else ''}; {args.rounds} rounds")
    print()
    print("| server | cold start s | 1 client req/s | p50 ms | p99 ms | 16 clients req/s | p50 ms | p99 ms "
          "| peak RSS MB | non-200 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    names = {"wick": "wick serve", "ort": "FastAPI + ONNX Runtime"}
    for i, row in enumerate(rounds):
        for which in ("wick", "ort"):
            print(fmt_row(f"{names[which]}, round {i + 1}", row[which]))
    for which in ("wick", "ort"):
        print(fmt_row(f"**{names[which]}, median**", median_row([row[which] for row in rounds])))
    print()
    for kind, what in (("jpeg", "the JPEG"), ("png", "its decoded pixels as PNG")):
        print(f"answers to {what}: wick {summarise_answer(args.task, answers['wick'][kind])}; "
              f"ORT {summarise_answer(args.task, answers['ort'][kind])}")
    agree = answers_agree(args.task, answers["wick"]["png"], answers["ort"]["png"])
    if not agree:
        print("error: given the same pixels (PNG), the two servers answer differently: the peer "
              "does not do wick's work, so no ratios", file=sys.stderr)
        return 1
    non_200 = sum(row[w][k]["non_200"] for row in rounds for w in ("wick", "ort") for k in ("one", "sixteen"))
    if non_200:
        print(f"error: {non_200} non-200 answers (column non-200): no ratios", file=sys.stderr)
        return 1

    def ratio(get):
        return statistics.median(get(row["wick"]) / get(row["ort"]) for row in rounds)

    ratios = {
        "rps_16": ratio(lambda m: m["sixteen"]["rps"]),
        "p50_1": ratio(lambda m: m["one"]["p50_ms"]),
        "rss": ratio(lambda m: m["rss_mb"]),
    }
    print(f"ratios wick / ORT (median of rounds): 16-client req/s {ratios['rps_16']:.2f}, "
          f"1-client p50 {ratios['p50_1']:.2f}, peak RSS {ratios['rss']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"scenario": args.scenario, "date": date, "cpu": args.cpu, "cores": os.cpu_count(),
                       "onnxruntime": onnxruntime.__version__, "wick_commit": args.commit,
                       "image": args.image, "duration": args.duration, "attributes": args.attributes,
                       "rounds": rounds, "ratios": ratios,
                       "answers": {w: {k: summarise_answer(args.task, a) for k, a in answers[w].items()}
                                   for w in answers}}, f, indent=1)
            f.write("\n")
    return 0


def image_size(path):
    from PIL import Image

    with Image.open(path) as img:
        return f"{img.width}x{img.height}"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", required=True)
    ap.add_argument("--task", required=True, choices=["classification", "segmentation", "detection"])
    ap.add_argument("--wick", required=True)
    ap.add_argument("--package", required=True, help="the wick package (the peer reads its config too)")
    ap.add_argument("--onnx", required=True, help="the same model as ONNX")
    ap.add_argument("--image", required=True, help="the JPEG both servers get")
    ap.add_argument("--attributes", default="", help=f"{ATTRIBUTES_HEADER} sent with every request")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--duration", default="20s", help="hey -z per client count")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="ORT intra-op threads (default: the cores wick's pool uses)")
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--log-dir", required=True, help="the servers' logs go here")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    args.cpu = cpu_model()
    os.makedirs(args.log_dir, exist_ok=True)
    try:
        rounds, answers = run(args)
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        print("error: serving benchmark failed; no ratios printed", file=sys.stderr)
        sys.exit(1)
    sys.exit(report(args, rounds, answers))


if __name__ == "__main__":
    main()
