"""The plugin manager: built-ins first, then installed plugins from the ``fmcli`` entry-point group.

Environment:
    FM_LOAD_PLUGINS   comma-separated distribution names to load; set but empty loads no
                      third-party plugin at all (the test suite does this). Unset loads all.
    FM_DEBUG_PLUGINS  when set, trace every hook call to stderr.
"""

import importlib.metadata
import os
import sys

import pluggy

from fmcli import hookspecs

BUILTIN_PLUGINS = (
    "fmcli.builtins.solvers",
    "fmcli.builtins.datasets",
    "fmcli.builtins.models",
    "fmcli.builtins.extractors",
    "fmcli.builtins.loggers",
    "fmcli.builtins.text_encoders",
    "fmcli.builtins.autoencoders",
)

pm = pluggy.PluginManager("fmcli")
pm.add_hookspecs(hookspecs)
_loaded = False
_versions: dict[str, str] = {}  # plugins loaded by name -> distribution version
failures: dict[
    str, str
] = {}  # installed plugins that failed to load -> "distribution: the error" (fm plugins shows them)


def load_plugins() -> pluggy.PluginManager:
    """Register built-ins and entry-point plugins once; later calls are no-ops."""
    global _loaded
    if _loaded:
        return pm
    _loaded = True
    for module_name in BUILTIN_PLUGINS:
        module = importlib.import_module(module_name)
        if not pm.is_registered(module):
            pm.register(module, name=module_name)
    wanted = os.environ.get("FM_LOAD_PLUGINS")
    if wanted is None:
        for dist in importlib.metadata.distributions():
            _register_entry_points(dist)
    else:
        for dist_name in filter(None, (n.strip() for n in wanted.split(","))):
            try:
                dist = importlib.metadata.distribution(dist_name)
            except importlib.metadata.PackageNotFoundError:
                from fmcli.errors import FMError

                raise FMError(f"FM_LOAD_PLUGINS names {dist_name!r}, which is not installed") from None
            _register_entry_points(dist)
    if os.environ.get("FM_DEBUG_PLUGINS"):
        pm.trace.root.setwriter(lambda message: sys.stderr.write(message))
        pm.enable_tracing()
    return pm


def _register_entry_points(dist: importlib.metadata.Distribution) -> None:
    """Register the distribution's ``fmcli`` entry points. A plugin that fails to import is recorded
    in ``failures`` (and named by ``fm plugins`` and unknown-name errors), not fatal for fm itself."""
    for entry_point in dist.entry_points:
        if entry_point.group != "fmcli" or pm.get_plugin(entry_point.name) is not None:
            continue
        try:
            plugin = entry_point.load()
        except Exception as error:  # noqa: BLE001 - any import error of third-party code
            failures[entry_point.name] = f"{dist.metadata['Name']}: {type(error).__name__}: {error}"
            continue
        pm.register(plugin, name=entry_point.name)
        _versions[entry_point.name] = dist.version


def plugin_versions() -> dict[str, str]:
    """Plugin name -> version of the distribution that provides it (built-ins: fmcli's version)."""
    from fmcli import __version__

    return {name: __version__ for name in BUILTIN_PLUGINS} | _versions
