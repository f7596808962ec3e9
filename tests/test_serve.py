"""``fm serve`` as a person uses it: a real server process (``python -m fmcli serve``) driven through Gradio's own
client (requests, results, capped and refused requests, the queue) and a real headless Chromium (the page loads,
generates, and is saved as a screenshot); start-up errors in one line; nothing fetched from or sent to the
internet. Skipped where Gradio (the ``serve`` extra) is not installed; the browser test where chromium is not.

Screenshots go to $FM_SCREENSHOT_DIR when set (else pytest's tmp_path).
"""

import contextlib
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from browser import Browser, find_chromium
from helpers import assert_one_line_error, fm
from PIL import Image

# Only the server process imports Gradio (seconds): here, that it is installed is enough.
if importlib.util.find_spec("gradio") is None:
    pytest.skip("fm serve's extra is not installed: pip install 'fmcli[serve]'", allow_module_level=True)
pytest.importorskip("gradio_client", reason="gradio_client comes with gradio")

# gradio_client and huggingface_hub phone home unless told before they are imported.
OFFLINE = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1"}
os.environ.update(OFFLINE)

REPO = Path(__file__).resolve().parents[1]
MAX_IMAGES, MAX_STEPS = 8, 20  # small caps for the test server, given on its command line
TINY = "tiny/last.safetensors"
WORDS = "words/last.safetensors"  # a text model
BROKEN = "broken/last.safetensors"

# The server under an audit hook that logs every name look-up and connection it makes (Python's socket audit
# events), so a test can assert that it phones nowhere.
AUDITED = """
import os, runpy, sys
log = open(os.environ["FM_NET_AUDIT_LOG"], "a", buffering=1)
def hook(event, args):
    if event == "socket.getaddrinfo":
        log.write(f"lookup {args[0]}\\n")
    elif event == "socket.connect":
        log.write(f"connect {args[1]}\\n")
sys.addaudithook(hook)
sys.argv = ["fm", *sys.argv[1:]]
runpy.run_module("fmcli", run_name="__main__", alter_sys=True)
"""
LOOPBACK = ("127.", "localhost", "::1", "('127.", "('::1'", "('localhost'")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_checkpoint, text_checkpoint):
    """A folder of runs (a tiny class model, a text model, a damaged file), a checkpoint OUTSIDE it, and ``fm serve``
    on a free port."""
    root = tmp_path_factory.mktemp("serve")
    runs = root / "runs"
    (runs / "tiny").mkdir(parents=True)
    (runs / "words").mkdir()
    (runs / "broken").mkdir()
    shutil.copy(text_checkpoint, runs / WORDS)
    shutil.copy(tiny_checkpoint, runs / TINY)  # the newest: the page opens on it
    (runs / BROKEN).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    shutil.copy(tiny_checkpoint, root / "outside.safetensors")  # must never be opened
    port, log = free_port(), root / "net-audit.log"
    env = os.environ | OFFLINE | {"PYTHONPATH": str(REPO), "FM_NET_AUDIT_LOG": str(log), "FM_LOAD_PLUGINS": "",
                                  "GRADIO_TEMP_DIR": str(root / "gradio")}  # fmt: skip
    command = [sys.executable, "-c", AUDITED, "serve", str(runs), "--port", str(port), "--device", "cpu",
               "--max-images", str(MAX_IMAGES), "--max-steps", str(MAX_STEPS)]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True).start()
    url = f"http://127.0.0.1:{port}/"
    import httpx

    deadline = time.monotonic() + 300
    while True:
        if process.poll() is not None:
            pytest.fail("fm serve exited:\n" + "".join(lines))
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=5).status_code == 200:
                break
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("fm serve did not answer within 300 s:\n" + "".join(lines))
        time.sleep(0.1)
    print(f"\nfm serve answered after {time.perf_counter() - started:.1f} s")
    while not any("fm serve: http" in line for line in lines) and time.monotonic() < deadline:
        time.sleep(0.05)  # the line saying where comes just after the page answers
    yield {"url": url, "root": root, "runs": runs, "lines": lines, "audit_log": log, "process": process}
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served["url"], verbose=False, download_files=True, analytics_enabled=False)


def request(name=TINY, klass="3", seed=0, num=2, animate=True, solver="euler", steps=2, cfg=2.0, compare=False,
            solver_b="heun", steps_b=1, cfg_b=1.0, interval="full", interval_b="full", prompt="",
            negative="") -> dict:  # fmt: skip
    """The inputs of /generate, by name."""
    return dict(name=name, klass=klass, seed=seed, num=num, animate=animate, solver_a=solver, steps_a=steps,
                cfg_a=cfg, compare=compare, solver_b=solver_b, steps_b=steps_b, cfg_b=cfg_b, interval_a=interval,
                interval_b=interval_b, prompt=prompt, negative=negative)  # fmt: skip


def refused(client, **change) -> str:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as caught:
        client.predict(**request(**change), api_name="/generate")
    message = str(caught.value)
    assert "Traceback" not in message and len(message.splitlines()) == 1, message
    return message


def test_started_in_one_line_listing_the_damaged_file(served):
    text = "".join(served["lines"])
    assert "fm serve: http://localhost:" in text and "(2 checkpoints, 1 unreadable" in text, text
    assert "listed as unreadable: broken/last.safetensors is not a readable safetensors checkpoint" in text
    assert str(served["runs"]) not in text.split("listed as unreadable")[1].splitlines()[0]  # names, not paths


def test_the_server_says_its_thread_count_once(served, client):
    """Chosen by fm train's rule when torch loads (here the suite's OMP_NUM_THREADS=1 wins), said once."""
    client.predict(**request(animate=False), api_name="/generate")
    said = [line.strip() for line in served["lines"] if line.startswith("threads:")]
    assert said == ["threads: 1 (set by OMP_NUM_THREADS)"], served["lines"]


def test_describe_gives_classes_defaults_and_fm_info(client):
    klass, solver_a, steps_a, cfg_a, span_a, solver_b, steps_b, cfg_b, span_b, about, info, prompt, negative = (
        client.predict(TINY, api_name="/describe")
    )
    assert prompt["visible"] is False and negative["visible"] is False  # a class model: no prompt boxes
    assert span_a["value"] == span_b["value"] == "full"
    choices = [c[0] for c in klass["choices"]]
    assert klass["value"] == "all" and choices[:3] == ["all", "0", "1"] and choices[-1] == "none"
    assert (solver_a["value"], steps_a["value"], cfg_a["value"]) == ("heun", 20, 2.0)
    assert (solver_b["value"], steps_b["value"]) == ("euler", 20)  # euler at heun 20's NFE, capped at 20 steps
    assert "mnist-mini" in about and "heun, 20 steps" in about
    assert "| step | `3` |" in info and "| path | `tiny/last.safetensors` |" in info
    broken = client.predict(BROKEN, api_name="/describe")
    assert "⚠" in broken[9] and "not a readable safetensors checkpoint" in broken[9]


def test_generate_gives_grid_animation_npz_and_the_figures(client):
    grid, gif, caption, grid_b, gif_b, caption_b, files = client.predict(**request(compare=True), api_name="/generate")
    picture = Image.open(grid)
    assert picture.format == "PNG" and picture.size == (3 * (2 * 30 + 2), 3 * (1 * 30 + 2))  # 2 digits, 3x
    animation = Image.open(gif)
    assert animation.format == "GIF" and animation.n_frames == 40  # fm animate's frames, from the same solve
    assert "**euler**, 2 steps" in caption and "**NFE 2**" in caption and "guidance 2" in caption
    assert "**heun**, 1 steps" in caption_b and "**NFE 2**" in caption_b
    assert sorted(Path(f).suffix for f in files) == [".gif", ".gif", ".npz", ".npz", ".png", ".png"]
    with np.load(next(f for f in files if f.endswith("-A.npz"))) as saved:
        assert saved["images"].shape == (2, 28, 28, 1) and saved["images"].dtype == np.uint8
        assert saved["labels"].tolist() == [3, 3]
    # the same seed and setting without the animation: the same pixels (the GIF's solve is fm sample's)
    again = client.predict(**request(animate=False), api_name="/generate")
    assert again[1] is None and again[3] is None and "Compare" in again[5]
    assert np.array_equal(np.asarray(Image.open(again[0])), np.asarray(picture))


def test_a_text_model_opens_with_a_prompt_and_draws_it(client):
    described = client.predict(WORDS, api_name="/describe")
    prompt, negative = described[-2:]
    assert prompt["visible"] is True and prompt["value"] in ("a red square", "a blue square", "red square",
                                                              "blue square")  # fmt: skip
    assert negative["visible"] is True and described[3]["value"] == 2.0  # guided by default, as fm sample --prompt
    assert described[0]["visible"] is False  # no class box for a text model
    assert "prompts" in described[9]
    grid, gif, caption, *_, files = client.predict(
        **request(name=WORDS, klass=None, prompt="a red square", negative="blue", animate=True), api_name="/generate"
    )
    assert "“a red square”" in caption and "steered away from “blue”" in caption
    with np.load(next(f for f in files if f.endswith("-A.npz"))) as saved:
        assert saved["prompts"].tolist() == ["a red square"] * 2 and saved["images"].shape == (2, 8, 8, 3)


def test_a_request_at_the_caps_runs(client):
    grid, *_ = client.predict(**request(num=MAX_IMAGES, steps=MAX_STEPS, animate=False), api_name="/generate")
    assert Image.open(grid).format == "PNG"


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(num=MAX_IMAGES + 1), f"greater than maximum value {MAX_IMAGES}|in 1..{MAX_IMAGES}"),
        (dict(steps=MAX_STEPS + 1), f"greater than maximum value {MAX_STEPS}|in 1..{MAX_STEPS}"),
        (dict(num=0), "less than minimum value 1|in 1..8"),
        (dict(seed=-1), "less than minimum value 0|seed must be"),
        (dict(solver="warp-drive"), "not in the list of choices|unknown solver"),
        (dict(klass="12"), "out of range"),
        (dict(solver="meanflow"), "meanflow"),  # a few-step solver on a flow model
        (dict(klass="none", cfg=3.0), "guidance needs a class"),
        (dict(interval="0.8,0.2"), "is empty"),
        (dict(interval="0.2,1.5"), "outside"),
        (dict(name=BROKEN), "not a readable safetensors checkpoint"),
    ],
)
def test_requests_over_the_caps_or_wrong_are_refused_in_one_line(client, change, message):
    assert re.search(message, refused(client, **change))


@pytest.mark.parametrize(
    "name", ["../outside.safetensors", "{root}/outside.safetensors", "/etc/passwd", "tiny/../../outside.safetensors"]
)
def test_paths_outside_the_served_folder_are_refused(client, served, name):
    message = refused(client, name=name.format(root=served["root"]))
    assert "fm serve opens only the checkpoints under the folder it was started with" in message


def test_the_server_keeps_serving_after_refusals(client):
    refused(client, num=MAX_IMAGES + 1)
    grid, *_ = client.predict(**request(animate=False), api_name="/generate")
    assert Image.open(grid).format == "PNG"


def test_checkpoints_are_not_served_as_files(served):
    import httpx

    for path in (served["runs"] / TINY, served["root"] / "outside.safetensors"):
        answer = httpx.get(f"{served['url']}gradio_api/file={path}", timeout=10)
        assert answer.status_code in (403, 404), answer.status_code


def test_the_page_fetches_nothing_from_the_internet(served):
    import httpx

    html = httpx.get(served["url"], timeout=10).text
    assert not re.findall(r'<(?:script|link)[^>]+(?:src|href)="(?:https?:)?//', html)
    config = httpx.get(served["url"] + "config", timeout=10).json()
    assert config["analytics_enabled"] is False and config["stylesheets"] == []
    theme = httpx.get(served["url"] + "theme.css", timeout=10).text
    assert not re.search(r"url\(['\"]?https?:|@import", theme) and "--font: ui-sans-serif" in theme


def test_a_second_request_waits_in_the_queue(client):
    """One sampling at a time: a request sent while another samples is IN_QUEUE until that one is done."""
    from gradio_client.utils import Status

    running = (Status.PROCESSING, Status.PROGRESS)
    first = client.submit(**request(num=MAX_IMAGES, steps=MAX_STEPS, solver="heun"), api_name="/generate")
    while first.status().code not in (*running, Status.FINISHED):
        time.sleep(0.02)
    second = client.submit(**request(num=1, steps=1, animate=False), api_name="/generate")
    seen = []
    while not second.done():
        code = second.status().code
        if not seen or seen[-1][0] != code:
            seen.append((code, first.status().code))
        time.sleep(0.02)
    first.result(timeout=300), second.result(timeout=300)
    assert any(code == Status.IN_QUEUE and other in running for code, other in seen), seen


@pytest.mark.skipif(find_chromium() is None, reason="no chromium on PATH (Debian: apt-get install -y chromium)")
def test_the_page_in_a_real_browser(served, tmp_path):
    pytest.importorskip("websocket", reason="websocket-client drives the browser (the test extra has it)")
    shots = Path(os.environ.get("FM_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with Browser(width=1400, height=1000, timeout=120) as browser:
        browser.goto(served["url"])
        browser.wait_for("!!document.querySelector('#generate')", timeout=120)
        browser.wait_for("(document.querySelector('#class input') || {}).value === 'all'", timeout=120)
        browser.js("document.querySelector('#compare input[type=checkbox]').click()")
        browser.js("document.querySelector('#generate').click()")
        for caption in ("#caption_a", "#caption_b"):
            browser.wait_for(f"(document.querySelector('{caption}') || {{}}).innerText?.includes('NFE')", 300)
        assert "NFE 40" in browser.js("document.querySelector('#caption_a').innerText")  # heun 20 x 2
        browser.wait_for("!!document.querySelector('#grid_a img') && !!document.querySelector('#gif_b img')")
        browser.wait_for("document.querySelector('#downloads').innerText.includes('.npz')")
        time.sleep(0.5)
        shot = browser.screenshot(shots / "fm-serve-test.png")
        outside = [u for u in browser.requested if not u.startswith(("http://127.0.0.1", "data:", "blob:"))]
        assert not outside, f"the page fetched from elsewhere: {outside[:5]}"
        assert not browser.errors, browser.errors
    picture = Image.open(shot)
    assert picture.width == 1400 and picture.height >= 900


def test_zz_the_server_phoned_nowhere(served):
    """Last in the file: while it started, served the page and sampled, the server looked up and connected to
    nothing but the loopback."""
    lines = served["audit_log"].read_text().splitlines() if served["audit_log"].exists() else []
    assert lines, "the audit hook logged nothing (the client's connections at least go through it)"
    assert [line for line in lines if not line.split(" ", 1)[1].startswith(LOOPBACK)] == []


def test_few_step_models_open_with_their_own_sampler():
    """The page's defaults come from the header: a distilled student (interval input, guidance folded in) opens
    with meanflow 4 (B: meanflow 1) and guidance 1; a flow model with label dropout with heun 20 and guidance 2."""
    from fmcli.io.header import CheckpointMeta
    from fmcli.sampling.options import default_sampler
    from fmcli.serve.app import class_choices, compare_default, default_guidance

    data = {"shape": [1, 28, 28], "num_classes": 10, "class_names": [str(i) for i in range(10)]}
    student = CheckpointMeta(1, {"name": "unet", "interval": True}, data, 50, 0.1, {"train_cfg": 2.0})
    assert default_sampler(student) == ("meanflow", 4) and compare_default(student) == ("meanflow", 1)
    assert default_guidance(student, "3") == (1.0, "full")
    flow = CheckpointMeta(1, {"name": "unet"}, data, 1600, 0.1, {})
    assert default_sampler(flow) == ("heun", 20) and compare_default(flow) == ("euler", 40)
    assert default_guidance(flow, "all") == (2.0, "full") and default_guidance(flow, "none") == (1.0, "full")
    assert class_choices(flow) == ["all", *data["class_names"], "none"]
    assert class_choices(CheckpointMeta(1, {}, data, 1, 0.0, {}))[-1] == "9"  # no label dropout: no 'none'


# --- start-up errors: one line, no traceback ----------------------------------------------------------------


def test_without_the_extra_fm_serve_names_it(monkeypatch, tmp_path, tiny_checkpoint):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    result = fm("serve", tiny_checkpoint.parent)
    assert_one_line_error(result, "pip install 'fmcli[serve]'", code=1)


def test_a_folder_without_checkpoints_or_only_damaged_ones(tmp_path):
    assert_one_line_error(fm("serve", tmp_path), "no readable .safetensors checkpoint under", code=1)
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    assert_one_line_error(fm("serve", tmp_path), "(1 unreadable: bad.safetensors is not a readable", code=1)
    assert_one_line_error(fm("serve", tmp_path / "missing"), "does not exist", code=1)


def test_a_port_in_use_and_the_network_warning(tiny_checkpoint):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = fm("serve", tiny_checkpoint.parent, "--host", "0.0.0.0", "--port", port)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith("warning: listening on 0.0.0.0") and "CPU/GPU" in lines[0]
    assert lines[-1].startswith(f"error: cannot listen on 0.0.0.0:{port}") and "another --port" in lines[-1]
