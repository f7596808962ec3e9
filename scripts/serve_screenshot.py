"""The README's picture of ``fm serve``: start it on a run folder, generate in a headless Chromium, save the page.

    python scripts/serve_screenshot.py runs/demo docs/serve.png [--port 7870]

Setting A is the checkpoint's default sampler; setting B is ticked ("Compare") with B's steps set to 5, so the
picture shows what the page is for: the same noise through two settings. Also prints how long the first page
took to answer after the process started (the start-up figure the README quotes is measured separately, on an
idle machine, with ``scripts/serve_startup.py``).
"""

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from browser import Browser  # noqa: E402


def set_number(browser: Browser, selector: str, value: int) -> None:
    """Type a value into a Gradio slider's number box, as a person would (select, type, Enter, leave)."""
    browser.js(f"(() => {{ const e = document.querySelector('{selector}'); e.focus(); e.select(); }})()")
    browser.call("Input.insertText", text=str(value))
    for kind in ("keyDown", "keyUp"):
        browser.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13)
    browser.js(f"document.querySelector('{selector}').blur()")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--port", type=int, default=7870)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--steps-b", type=int, default=5)
    args = parser.parse_args()
    env = os.environ | {"PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "fmcli", "serve", str(args.runs), "--port", str(args.port), "--device", "cpu"]
    started = time.perf_counter()
    server = subprocess.Popen(command, env=env)
    try:
        url = f"http://127.0.0.1:{args.port}/"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except OSError:
                if server.poll() is not None:
                    sys.exit("fm serve exited")
                time.sleep(0.05)
        print(f"first page after {time.perf_counter() - started:.2f} s", flush=True)
        with Browser(width=1400, height=1000, timeout=300) as browser:
            browser.goto(url)
            browser.wait_for("(document.querySelector('#class input') || {}).value === 'all'", timeout=300)
            set_number(browser, "#num input[type=number]", args.images)
            browser.js("document.querySelector('#compare input[type=checkbox]').click()")
            set_number(browser, "#steps_b input[type=number]", args.steps_b)
            time.sleep(0.5)
            browser.js("document.querySelector('#generate').click()")
            for caption in ("#caption_a", "#caption_b"):
                browser.wait_for(f"(document.querySelector('{caption}') || {{}}).innerText?.includes('NFE')", 900)
            browser.wait_for("!!document.querySelector('#gif_b img')", 120)
            browser.wait_for("document.querySelector('#downloads').innerText.includes('.npz')", 120)
            browser.js("document.querySelector('#info')?.closest('.block')?.querySelector('button')?.click()")
            time.sleep(1.5)
            browser.screenshot(args.out)
            print(browser.js("document.querySelector('#caption_a').innerText"))
            print(browser.js("document.querySelector('#caption_b').innerText"))
            outside = [u for u in browser.requested if not u.startswith(("http://127.0.0.1", "data:", "blob:"))]
            print(f"wrote {args.out}; requests outside the machine: {outside}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
