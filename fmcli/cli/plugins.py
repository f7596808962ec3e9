"""``fm plugins``: every plugin, its version, and what it registers."""

from typing import Annotated

import typer
from rich.table import Table

from fmcli import registry
from fmcli.cli._common import cli_errors, console, print_json
from fmcli.plugins import load_plugins, plugin_versions

KINDS = {"solvers": "fm_register_solvers", "datasets": "fm_register_datasets", "models": "fm_register_models",
         "feature_extractors": "fm_register_feature_extractors"}


def plugin_table() -> list[dict]:
    pm = load_plugins()
    versions = plugin_versions()
    rows = {name: {"name": name, "version": versions.get(name, "?")} | {kind: [] for kind in KINDS}
            for name, _ in pm.list_name_plugin()}
    for kind, hook in KINDS.items():
        for item, owner in registry.owners(hook).items():
            rows[owner][kind].append(item)
    return list(rows.values())


@cli_errors
def plugins_command(json_output: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """List plugins (built-in and installed) with their versions and what they register.

    Installed plugins come from the `fmcli` entry-point group; FM_LOAD_PLUGINS=a,b loads only
    those distributions (empty: none), FM_DEBUG_PLUGINS=1 traces hook calls.
    """
    rows = plugin_table()
    if json_output:
        print_json(rows)
        return
    table = Table(title="fm plugins")
    table.add_column("plugin", no_wrap=True)
    for column in ("version", *KINDS):
        table.add_column(column.replace("_", " "), overflow="fold")
    for row in rows:
        table.add_row(row["name"], row["version"], *(", ".join(row[kind]) for kind in KINDS))
    console.print(table)
