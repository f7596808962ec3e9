"""Name -> implementation tables, filled by calling each plugin's ``fm_register_*`` hook.

Each hook implementation gets its own ``register`` callback, so a name registered twice
is reported with both plugins that claim it.
"""

import difflib
from collections.abc import Callable
from typing import Any

from fmcli.errors import FMError
from fmcli.plugins import load_plugins

_cache: dict[str, dict[str, Any]] = {}
_owners: dict[str, dict[str, str]] = {}


def _collect(hook_name: str) -> dict[str, Any]:
    if hook_name in _cache:
        return _cache[hook_name]
    pm = load_plugins()
    table: dict[str, Any] = {}
    owners: dict[str, str] = {}
    for impl in getattr(pm.hook, hook_name).get_hookimpls():

        def register(item: Any, _plugin: str = impl.plugin_name) -> None:
            name = item.name
            if name in table:
                raise FMError(f"{hook_name}: name {name!r} is registered by both {owners[name]!r} and {_plugin!r}")
            table[name] = item
            owners[name] = _plugin

        impl.function(register=register)
    _cache[hook_name] = dict(sorted(table.items()))
    _owners[hook_name] = owners
    return _cache[hook_name]


def reset() -> None:
    """Forget collected tables (tests call this after registering plugins inline)."""
    _cache.clear()
    _owners.clear()


def owners(hook_name: str) -> dict[str, str]:
    """Registered name -> plugin name, for ``fm plugins``."""
    _collect(hook_name)
    return _owners[hook_name]


def _lookup(hook_name: str, kind: str, name: str) -> Any:
    table = _collect(hook_name)
    if name in table:
        return table[name]
    from fmcli.plugins import failures

    close = difflib.get_close_matches(name, list(table), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    broken = f" (plugins that failed to load: {'; '.join(failures.values())})" if failures else ""
    raise FMError(f"unknown {kind} {name!r}.{hint} Known: {', '.join(table)}{broken}")


def solvers() -> dict[str, Any]:
    return _collect("fm_register_solvers")


def datasets() -> dict[str, Any]:
    return _collect("fm_register_datasets")


def models() -> dict[str, Any]:
    return _collect("fm_register_models")


def feature_extractors() -> dict[str, Any]:
    return _collect("fm_register_feature_extractors")


def loggers() -> dict[str, Any]:
    return _collect("fm_register_loggers")


def text_encoders() -> dict[str, Any]:
    return _collect("fm_register_text_encoders")


def get_text_encoder(name: str) -> Any:
    return _lookup("fm_register_text_encoders", "text encoder", name)


def autoencoders() -> dict[str, Any]:
    return _collect("fm_register_autoencoders")


def get_autoencoder(name: str) -> Any:
    return _lookup("fm_register_autoencoders", "autoencoder", name)


def get_logger(name: str) -> Any:
    return _lookup("fm_register_loggers", "logger", name)


def get_solver(name: str) -> Any:
    return _lookup("fm_register_solvers", "solver", name)


def get_dataset(name: str) -> Any:
    return _lookup("fm_register_datasets", "data set", name)


def get_model(name: str) -> Any:
    return _lookup("fm_register_models", "model", name)


def get_feature_extractor(name: str) -> Any:
    return _lookup("fm_register_feature_extractors", "feature extractor", name)


def completer(table: Callable[[], dict[str, Any]]) -> Callable[[str], list[str]]:
    """Shell-completion callback for a Typer option over one registry."""
    return lambda incomplete: [name for name in table() if name.startswith(incomplete)]
