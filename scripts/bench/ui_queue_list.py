"""How long the web UI's queue list takes to show with N queues (issue 12: < 1 s at 10,000).

    .venv/bin/python scripts/bench/ui_queue_list.py [--queues 10000] [--warren target/release/warren]

Starts its own warren (release build by default) on free ports of 127.0.0.1, declares N
queues with pika, logs in with headless Chromium (Debian's chromium + chromium-driver,
nothing downloaded), and measures, in the page, the time from setting the location hash
to #/queues (or to a sorted/filtered variant) until the list shows its rows: a navigation
inside the single-page app, which is what a user does. Prints one line per case, with the
API requests the page made and their durations.
"""
import argparse, os, shutil, socket, subprocess, sys, tempfile, time
from pathlib import Path

import pika
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queues", type=int, default=10_000)
    ap.add_argument("--warren", default=str(ROOT / "target/release/warren"))
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    os.environ["SE_OFFLINE"] = "true"
    d = Path(tempfile.mkdtemp(prefix="warren-ui-bench-"))
    port, mport = free_port(), free_port()
    w = subprocess.Popen([a.warren, "--amqp-port", str(port), "--bind", "127.0.0.1", "--management-port", str(mport),
                          "--prometheus-port", "0", "--data-dir", str(d / "data")],
                         stdout=open(d / "log", "wb"), stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
        ch = conn.channel()
        for i in range(a.queues):
            ch.queue_declare(f"bulk-{i:05d}")
        conn.close()
        opts = webdriver.ChromeOptions()
        opts.binary_location = "/usr/bin/chromium"
        for x in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
            opts.add_argument(x)
        drv = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=opts)
        try:
            drv.get(f"http://127.0.0.1:{mport}/#/overview")
            WebDriverWait(drv, 15).until(EC.visibility_of_element_located((By.ID, "login-user")))
            drv.find_element(By.ID, "login-user").send_keys("guest")
            drv.find_element(By.ID, "login-pass").send_keys("guest")
            drv.find_element(By.ID, "login-btn").click()
            WebDriverWait(drv, 15).until(EC.text_to_be_present_in_element((By.ID, "whoami"), "guest"))
            total = f"{a.queues:,}"
            cases = [("list", "#/queues"), ("sorted by depth", "#/queues?sort=messages&sort_reverse=true"),
                     ("regex filter", "#/queues?name=%5Ebulk-0999&use_regex=true"), ("page 50", "#/queues?page=50")]
            for label, hash_ in cases:
                times = []
                for _ in range(a.reps):
                    drv.execute_script("location.hash = '#/overview'")
                    WebDriverWait(drv, 15).until(lambda x: x.execute_script("return !document.querySelector('#queues-info')"))
                    drv.execute_script("performance.clearResourceTimings(); window.__t0 = performance.now();"
                                       "location.hash = arguments[0]", hash_)
                    WebDriverWait(drv, 30, poll_frequency=0.005).until(lambda x: x.execute_script(
                        "const e = document.querySelector('#queues-info'); const r = document.querySelectorAll('#queues tbody tr');"
                        f"return e && e.textContent.includes('of {total}') && r.length > 0"))
                    times.append(drv.execute_script("return performance.now() - window.__t0"))
                reqs = drv.execute_script("return performance.getEntriesByType('resource')"
                                          ".map(e => [e.name.replace(/^.*\\/api/, '/api'), Math.round(e.duration)])")
                times.sort()
                print(f"{label:16} median {times[len(times)//2]:6.0f} ms  max {max(times):6.0f} ms  requests {reqs}")
            # A full page load (reload, or a bookmark opened in a logged-in tab): from the
            # navigation's start (performance.timeOrigin) until the rows are there.
            times = []
            for _ in range(a.reps):
                drv.execute_script("location.hash = '#/queues'")
                drv.refresh()
                WebDriverWait(drv, 30, poll_frequency=0.005).until(lambda x: x.execute_script(
                    "const e = document.querySelector('#queues-info'); const r = document.querySelectorAll('#queues tbody tr');"
                    f"return e && e.textContent.includes('of {total}') && r.length > 0"))
                times.append(drv.execute_script("return performance.now()"))
            times.sort()
            print(f"{'page load':16} median {times[len(times)//2]:6.0f} ms  max {max(times):6.0f} ms")
        finally:
            drv.quit()
    finally:
        w.terminate()
        w.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
