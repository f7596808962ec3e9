"""Start and stop ``fm serve``: offline settings, localhost by default, the page first and torch after.

Start-up order, for a page that answers soon after the command starts: Gradio is imported (after the settings
that keep it offline), the folder is scanned (headers only), the page is built and listening; only then does a
background thread import torch and load the first checkpoint, while the person looks at the page.

Offline: no analytics or version check (Gradio), no telemetry (huggingface_hub), no share link, no server-side
rendering (Node), no MCP server, no fonts from the internet (system fonts), no uploads (the page has none).
"""

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmcli.errors import FMError
from fmcli.serve.limits import Limits

DEFAULT_HOST = "127.0.0.1"  # this machine only
DEFAULT_PORT = 7860  # Gradio's usual port
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_QUEUE = 16  # requests waiting behind the one that samples; more are refused with "queue full"

# Read by Gradio and huggingface_hub at import or when a page is built: set before ``import gradio``.
OFFLINE_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_SHARE": "False",
    "GRADIO_SSR_MODE": "False",
    "GRADIO_MCP_SERVER": "False",
    "GRADIO_RUN_HISTORY": "False",
}
EXTRA = "fm serve needs Gradio, an optional extra: pip install 'fmcli[serve]'"


@dataclass
class ServeOptions:
    root: Path  # a checkpoint, a run folder or a folder of runs: nothing outside it is opened
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    device: str = "auto"
    limits: Limits = field(default_factory=Limits)
    threads: int | None = None  # --threads; None: fmcli.runtime.threads chooses, and adapts per request


@dataclass
class Server:
    """A running page: ``url``, and ``close()`` to stop it and remove its files."""

    url: str
    demo: Any
    work: Path
    checkpoints: int
    unreadable: list[str]
    warm_up: threading.Thread

    def close(self) -> None:
        self.demo.close()
        shutil.rmtree(self.work, ignore_errors=True)


def public_warning(host: str, port: int) -> str | None:
    if host in LOCAL_HOSTS:
        return None
    return (
        f"warning: listening on {host}:{port}: anyone who can reach this machine on the network can use the page, "
        "and with it this machine's CPU/GPU; there is no login. Leave out --host to serve this machine only."
    )


def import_gradio() -> Any:
    """Gradio, imported with the offline settings; FMError naming the extra when it is not installed."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import gradio
    except ImportError:
        raise FMError(EXTRA) from None
    return gradio


@contextlib.contextmanager
def patient_start_check(seconds: float = 60.0) -> Iterator[None]:
    """Gradio's launch checks that the page answers on localhost with a few 3-second tries, and refuses to start
    otherwise; on a busy 2-core machine the first answer can take longer. This gives the check ``seconds``."""
    from gradio import networking

    quick = getattr(networking, "url_ok", None)
    if quick is None:  # another Gradio: leave it alone
        yield
        return

    def url_ok(url: str) -> bool:
        deadline = time.monotonic() + seconds
        while not quick(url):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    networking.url_ok = url_ok
    try:
        yield
    finally:
        networking.url_ok = quick


def check_port(host: str, port: int) -> None:
    """FMError when the port is taken, by the test Gradio makes before it listens (bind the port on the loopback,
    SO_REUSEADDR): the same answer, without the seconds of ``import gradio`` first."""
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((os.environ.get("GRADIO_SERVER_NAME", DEFAULT_HOST), port))
        except OSError as error:
            raise FMError(
                f"cannot listen on {host}:{port} ({error.strerror or error}); pass another --port, or stop what uses it"
            ) from None


def start(options: ServeOptions, say: Callable[[str], None] = print) -> Server:
    """Build the page and listen (in Gradio's threads); returns once the page answers."""
    from fmcli.serve.catalog import Catalog

    catalog = Catalog(options.root)  # first: a folder without checkpoints fails at once, before Gradio's import
    usable = catalog.usable
    unreadable = [entry.error or entry.name for entry in catalog.entries if entry.error is not None]
    if not usable:
        found = f" ({len(unreadable)} unreadable: {unreadable[0]})" if unreadable else ""
        raise FMError(f"no readable .safetensors checkpoint under {options.root}{found}")
    for reason in unreadable:
        say(f"warning: listed as unreadable: {reason}")
    check_port(options.host, options.port)  # a port in use fails at once too, not after Gradio's import
    import_gradio()
    from fmcli import registry
    from fmcli.serve.app import CSS, build_app, offline_theme
    from fmcli.serve.models import ModelCache

    models = ModelCache(options.device)
    work = Path(tempfile.mkdtemp(prefix="fm-serve-"))
    demo = build_app(catalog, options.limits, models, list(registry.solvers()), work)
    demo.queue(default_concurrency_limit=1, max_size=MAX_QUEUE)
    try:
        with patient_start_check():
            demo.launch(
                server_name=options.host,
                server_port=options.port,
                share=False,
                inbrowser=False,
                prevent_thread_lock=True,
                show_error=True,
                quiet=True,
                footer_links=[],
                enable_monitoring=False,
                ssr_mode=False,
                pwa=False,
                mcp_server=False,
                max_file_size="1kb",  # the page has no upload: refuse uploads to the API
                blocked_paths=[str(catalog.root)],  # checkpoints are never served as files
                strict_cors=True,
                theme=offline_theme(),
                css=CSS,
            )
    except ValueError as error:
        demo.close()
        shutil.rmtree(work, ignore_errors=True)
        if "localhost is not accessible" not in str(error):
            raise
        raise FMError(  # Gradio's own check that the page answers on localhost failed
            f"the page did not answer on {options.host}:{options.port} within a minute of starting; if a proxy "
            "catches localhost, set no_proxy=localhost,127.0.0.1"
        ) from None
    except OSError as error:  # Gradio: "Cannot find empty port in range: 7860-7860. ..."
        demo.close()
        shutil.rmtree(work, ignore_errors=True)
        first = (str(error).splitlines() or [""])[0].rstrip(".")
        raise FMError(
            f"cannot listen on {options.host}:{options.port} ({first}); pass another --port, or stop what uses it"
        ) from None

    def warm_up() -> None:
        """torch and the first checkpoint, loaded after the page answers (a broken file is reported when used)."""
        try:
            import fmcli.serve.render  # noqa: F401  (torch, the samplers)
            from fmcli.runtime.threads import configure

            say(configure(options.threads).describe())  # the rule fm train uses; requests tick its governor

            models.get(usable[0])
        except Exception:  # noqa: BLE001 - a request for it says what is wrong
            pass

    thread = threading.Thread(target=warm_up, name="fm-serve-warm-up", daemon=True)
    thread.start()
    host = "localhost" if options.host in LOCAL_HOSTS else options.host
    url = f"http://{host if ':' not in host else f'[{host}]'}:{options.port}/"
    return Server(url, demo, work, len(usable), unreadable, thread)


def serve(options: ServeOptions, say: Callable[[str], None] = print, started: float | None = None) -> None:
    """``fm serve``: start, say where, and serve until Ctrl+C or SIGTERM."""
    warning = public_warning(options.host, options.port)
    if warning:
        say(warning)
    server = start(options, say)
    ready = f"; page ready {time.perf_counter() - started:.1f} s after start" if started is not None else ""
    skipped = f", {len(server.unreadable)} unreadable" if server.unreadable else ""
    say(f"fm serve: {server.url}  ({server.checkpoints} checkpoints{skipped}{ready}; Ctrl+C to stop)")
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()
