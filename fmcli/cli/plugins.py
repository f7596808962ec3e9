"""``fm plugins``: every registered solver, data set, model, feature extractor, logger, text encoder and
autoencoder, and the plugin behind it."""

from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from fmcli import registry
from fmcli.cli._common import cli_errors, console, err_console, print_json
from fmcli.plugins import BUILTIN_PLUGINS, failures, load_plugins, plugin_versions

# kind (the --json key) -> (its hook, its name in the table, the registry it fills)
KINDS = {
    "solvers": ("fm_register_solvers", "solver", registry.solvers),
    "datasets": ("fm_register_datasets", "data set", registry.datasets),
    "models": ("fm_register_models", "model", registry.models),
    "feature_extractors": ("fm_register_feature_extractors", "extractor", registry.feature_extractors),
    "loggers": ("fm_register_loggers", "logger", registry.loggers),
    "text_encoders": ("fm_register_text_encoders", "text encoder", registry.text_encoders),
    "autoencoders": ("fm_register_autoencoders", "autoencoder", registry.autoencoders),
}


def plugin_table() -> list[dict]:
    """One entry per plugin: its name, version and what it registers (the --json output)."""
    pm = load_plugins()
    versions = plugin_versions()
    rows = {
        name: {"name": name, "version": versions.get(name, "?")} | {kind: [] for kind in KINDS}
        for name, _ in pm.list_name_plugin()
    }
    for kind, (hook, _, _) in KINDS.items():
        for item, owner in registry.owners(hook).items():
            rows[owner][kind].append(item)
    return list(rows.values())


def item_rows() -> list[tuple[str, str, str, str, str]]:
    """One row per registered item: (kind, name, plugin, version, description)."""
    versions = plugin_versions()
    rows = []
    for hook, kind, table in KINDS.values():
        owners = registry.owners(hook)
        for name, item in table().items():
            owner = owners[name]
            plugin = "fmcli" if owner in BUILTIN_PLUGINS else owner  # fm's own modules, one name for all
            description = " ".join(str(getattr(item, "description", "") or "").split())
            rows.append((kind, name, plugin, versions.get(owner, "?"), description))
    return rows


def items_table(rows: list[tuple[str, str, str, str, str]]) -> Table:
    """Kind, name, plugin and version never wrap (so `fm plugins | grep -w NAME` finds a whole line);
    the description takes the remaining width and folds."""
    table = Table(
        title="fm plugins (--json: a list per plugin)", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False
    )
    for index, column in enumerate(("kind", "name", "plugin", "version")):
        widest = max([len(column)] + [len(row[index]) for row in rows])
        table.add_column(column, no_wrap=True, min_width=widest)
    table.add_column("description", overflow="fold", ratio=1)
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))  # "fmcli[inception]" is text, not markup
    return table


@cli_errors
def plugins_command(json_output: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """List what is registered: solvers, data sets, models, feature extractors, loggers, text encoders and
    autoencoders, one per row, with the plugin (built-in or installed) and version that provides it.

    Installed plugins come from the `fmcli` entry-point group; FM_LOAD_PLUGINS=a,b loads only
    those distributions (empty: none), FM_DEBUG_PLUGINS=1 traces hook calls.

    Examples:

      fm plugins

      fm plugins | grep -w midpoint

      fm plugins --json
    """
    if json_output:
        print_json(plugin_table() + [{"name": name, "error": error} for name, error in failures.items()])
    else:
        console.print(items_table(item_rows()))
    for name, error in failures.items():
        err_console.print(f"warning: plugin {name!r} failed to load ({error})", markup=False, highlight=False)
