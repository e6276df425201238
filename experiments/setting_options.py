"""Command-line options that are service settings: their defaults and help come from the settings models.

An experiment names the settings it lets its user choose; `--clip-norm` then means
the aggregator's clip_norm, with the aggregator's default and description. An option
left out keeps the model's default, so an experiment, the demo and the services
never disagree about one.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from scripts.launcher import SERVICE_SETTINGS, SettingValues

# Older spellings of a few options, kept so that recorded commands still run.
ALIASES = {"partition_scheme": ("--partition",), "partition_alpha": ("--alpha",)}


def _field(name: str) -> tuple[str, object, str, bool]:
    """(model, default, description, whether it is a switch: a bool, or a bool whose unset default is decided)."""
    for model in SERVICE_SETTINGS.values():
        if name in model.model_fields:
            field = model.model_fields[name]
            switch = isinstance(field.default, bool) or field.annotation == (bool | None)
            return model.__name__, field.default, field.description or "", switch
    raise KeyError(f"no service setting is called {name!r}")


def add_setting_options(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    group = parser.add_argument_group("service settings (defaults from the settings models)")
    for name in names:
        model, default, description, switch = _field(name)
        flags = (f"--{name.replace('_', '-')}", *ALIASES.get(name, ()))
        help_text = f"{description} (default {default}; {model})".strip()
        if switch:
            group.add_argument(*flags, dest=name, default=None, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            group.add_argument(*flags, dest=name, default=None, help=help_text)


def chosen_settings(args: argparse.Namespace, names: Iterable[str]) -> SettingValues:
    """The settings the user named on the command line (as given: the models check them)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}
