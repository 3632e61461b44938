#!/usr/bin/env python
"""Speed and memory of ``dcinet-search serve`` on an index, as its users meet them.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/benchmark_server.py [/tmp/demo19/gallery_index] \
        [--queries 96] [--clients 8] [--page-loads 5] [--weights FILE]

Starts the real server (``dcinet-search serve``, uvicorn, in its own process, on a free 127.0.0.1 port) on the
index and measures:

- query latency through the HTTP API: ``POST /api/query`` of a gallery person (the best-scoring detection of
  each of the first ``--queries`` frames, top 10, one hit per frame, its own frame left out, as the page asks),
  p50 / p95 per request, with one client (one request at a time), then with ``--clients`` clients sending at
  once (the same requests, split among them), and the throughput of each;
- page load in headless Chromium (Debian's chromium and chromium-driver, driven by Selenium as
  tests/search/test_page_browser.py does): from navigation to the gallery grid shown with every thumbnail
  in the window decoded, and from clicking a person on an opened frame to the results view shown (ranked
  hits with every crop in the window decoded); the median of ``--page-loads`` fresh page loads (browser cache off);
- the server's resident memory (VmRSS of its process, from /proc) once the index and model are loaded and
  idle, and its peak (VmHWM) after the runs.

Prints Markdown tables for BENCHMARKS.md. The device is the CPU (``--device``).
"""
import argparse
import concurrent.futures
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np

WAIT_S = 120


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(index, port, weights, device):
    search = os.path.join(os.path.dirname(sys.executable), "dcinet-search")
    command = [search, "serve", "--index", index, "--port", str(port), "--device", device]
    if weights:
        command += ["--weights", weights]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            get_json(port, "/api/info")
            return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"the server ended: {proc.stderr.read()[-2000:]}") from None
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("the server did not answer within 120 s") from None
            time.sleep(0.2)


def get_json(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as response:
        return json.load(response)


def post_query(port, body):
    """Seconds of one POST /api/query (the answer read whole), and the number of hits."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/query", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        hits = len(json.load(response)["hits"])
    return time.perf_counter() - start, hits


def query_bodies(port, count):
    """The page's query for the best-scoring person of each of the first ``count`` frames."""
    frames = get_json(port, f"/api/frames?offset=0&limit={min(count, 500)}")["frames"]
    bodies = []
    for entry in frames:
        detail = get_json(port, "/api/frame?" + urllib.parse.urlencode({"image": entry["image"]}))
        if detail["boxes"]:
            best = detail["boxes"][0]  # best first
            bodies.append({"image": entry["image"], "frame": entry.get("frame"), "box": best["box"], "top_k": 10,
                           "one_per_image": True, "exclude_images": [entry["image"]]})
    return bodies


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def latency(port, bodies, clients):
    """(p50 ms, p95 ms, queries per second) of the bodies sent by ``clients`` concurrent clients."""
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda b: post_query(port, b), bodies))
    wall = time.perf_counter() - start
    times = np.array([t for t, _ in results]) * 1e3
    assert all(n > 0 for _, n in results), "a query came back without hits"
    return np.percentile(times, 50), np.percentile(times, 95), len(bodies) / wall


def page_loads(port, count):
    """[(seconds to the grid, seconds from a click on a person to the results view)] of fresh page loads;
    None when Chromium or its driver is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        print("no Chromium: apt-get install chromium chromium-driver; page loads not measured", file=sys.stderr)
        return None
    from selenium import webdriver
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,800", "--disable-application-cache", "--disk-cache-size=0"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
    wait = WebDriverWait(driver, WAIT_S, poll_frequency=0.005)
    # Images in the window decoded (the grid's thumbnails load lazily: those below the fold wait for a scroll).
    all_decoded = ("return [...document.querySelectorAll(arguments[0])].filter(i => { const r = "
                   "i.getBoundingClientRect(); return r.top < innerHeight && r.bottom > 0; })"
                   ".every(i => i.complete && i.naturalWidth > 0)")
    out = []
    try:
        for _ in range(count):
            driver.get("about:blank")
            start = time.perf_counter()
            driver.get(f"http://127.0.0.1:{port}/")
            wait.until(lambda d: d.find_elements("css selector", "#grid .thumb img")
                       and d.execute_script(all_decoded, "#grid .thumb img"))
            grid = time.perf_counter() - start
            driver.find_element("css selector", "#grid .thumb").click()
            wait.until(lambda d: d.find_elements("css selector", "#overlay rect.det"))
            person = driver.find_elements("css selector", "#overlay rect.det")[-1]  # the best, drawn last
            start = time.perf_counter()
            person.click()
            wait.until(lambda d: d.find_elements("css selector", "#hits .hit img")
                       and d.execute_script(all_decoded, "#hits .hit img"))
            out.append((grid, time.perf_counter() - start))
    finally:
        driver.quit()
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index", nargs="?", default="/tmp/demo19/gallery_index", help="index folder")
    parser.add_argument("--weights", help="the model's weights (default: the file named in the index manifest)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--queries", type=int, default=96, help="gallery people queried (the first frames')")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--page-loads", type=int, default=5)
    args = parser.parse_args(argv)

    port = free_port()
    started = time.perf_counter()
    server = start_server(args.index, port, args.weights, args.device)
    startup = time.perf_counter() - started
    try:
        info = get_json(port, "/api/info")
        idle_rss = rss_kib(server.pid)
        bodies = query_bodies(port, args.queries)
        for body in bodies[:4]:  # warm-up
            post_query(port, body)
        one = latency(port, bodies, 1)
        many = latency(port, bodies, args.clients)
        pages = page_loads(port, args.page_loads)
        peak_rss = rss_kib(server.pid, "VmHWM")
    finally:
        server.terminate()
        server.wait(30)
    print(f"index {args.index}: {info.get('num_images')} images, {info.get('num_boxes')} boxes; device "
          f"{args.device}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}; {len(bodies)} queries; server "
          f"start to first answer {startup:.1f} s\n")
    print("| HTTP API, POST /api/query (top 10, one per frame) | p50 (ms) | p95 (ms) | queries/s |\n|---|---|---|---|")
    print(f"| 1 client | {one[0]:.1f} | {one[1]:.1f} | {one[2]:.1f} |")
    print(f"| {args.clients} concurrent clients | {many[0]:.1f} | {many[1]:.1f} | {many[2]:.1f} |\n")
    if pages:
        grid, results = np.median(np.array(pages), axis=0) * 1e3
        print(f"| headless Chromium, median of {len(pages)} fresh loads | ms |\n|---|---|")
        print(f"| page open to the gallery grid shown (thumbnails in the window decoded) | {grid:.0f} |")
        print(f"| click on a person to the results view shown (hits' crops decoded) | {results:.0f} |\n")
    print(f"| server memory | MiB |\n|---|---|\n| resident, index and model loaded, idle | {idle_rss / 1024:.0f} |")
    print(f"| peak resident, after the runs | {peak_rss / 1024:.0f} |\n")
    print(f"Command: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} .venv/bin/python "
          f"scripts/benchmark_server.py {' '.join(argv or sys.argv[1:])}")


if __name__ == "__main__":
    main()
