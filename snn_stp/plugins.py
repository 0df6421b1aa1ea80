"""Plugins: modules of your own that register schedulers, models or data sets for the command line.

A registration happens when its module is imported. A script imports its module itself; the
``snn-stp`` command (and every process it starts: sweep workers, torchrun ranks) imports

- the modules named in the environment variable ``SNN_STP_PLUGINS`` (comma-separated module
  names, importable from ``PYTHONPATH`` or the current folder), for a module of a project of
  your own, and
- the entry points of the group ``snn_stp.plugins`` of installed packages (in ``pyproject.toml``:
  ``[project.entry-points."snn_stp.plugins"] my_methods = "my_package.schedulers"``), for a
  package that extends snn-stp wherever it is installed.

A run records its scheduler and model by name, so resuming, evaluating or exporting it needs the
same plugins.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys

from .errors import UsageError

PLUGINS_VARIABLE = "SNN_STP_PLUGINS"
ENTRY_POINT_GROUP = "snn_stp.plugins"

_loaded: list[str] = []


class PluginError(UsageError):
    """A plugin named by ``SNN_STP_PLUGINS`` or an entry point cannot be imported."""


def plugin_modules() -> list[str]:
    """The module names ``SNN_STP_PLUGINS`` gives, in order."""
    return [name.strip() for name in os.environ.get(PLUGINS_VARIABLE, "").split(",") if name.strip()]


def load_plugins() -> list[str]:
    """Import every plugin module (once per process); returns the names imported so far.

    Raises :class:`PluginError` naming the module, its source and the import's own error.
    """
    names = plugin_modules()
    if names and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # as `python -m` does: a module in the current folder is found
    for name in names:
        _import(name, f"{PLUGINS_VARIABLE}={os.environ[PLUGINS_VARIABLE]}")
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        _import(entry.value.split(":")[0], f"the {ENTRY_POINT_GROUP} entry point {entry.name!r} of "
                                           f"{entry.dist.name if entry.dist else 'an installed package'}")
    return list(_loaded)


def _import(module: str, source: str) -> None:
    if module in _loaded:
        return
    try:
        importlib.import_module(module)
    except Exception as error:  # any failure of the plugin's own code is reported, not raised as ours
        raise PluginError(f"plugin module {module!r} (from {source}) cannot be imported: {type(error).__name__}: "
                          f"{error}. Set {PLUGINS_VARIABLE} to importable module names separated by commas (their "
                          "folder on PYTHONPATH or the current folder)") from error
    _loaded.append(module)
