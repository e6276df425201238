"""A service's settings from its environment or `--config FILE`, with errors a person can act on.

- `--help` lists every setting with its description, its choices and its default. This module
  imports only the standard library and pydantic, so the services parse their arguments before
  they import torch or TenSEAL, and `--help` answers at once.
- An unknown `<PREFIX>*` environment variable or env-file key is refused, naming the closest
  known setting ("did you mean").
- A value that does not validate gives one line per problem, naming the setting and the
  value, never a traceback.
"""

from __future__ import annotations

import argparse
import difflib
import enum
import os
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


class SettingsError(SystemExit):
    """Settings that cannot start the service; its message is one line per problem."""


def env_prefix(settings_class: type[BaseSettings]) -> str:
    return str(settings_class.model_config.get("env_prefix", ""))


def choices(annotation: object) -> list[str]:
    """The values a setting accepts, where its type lists them (Literal or Enum, optional or not)."""
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [str(member.value) for member in annotation]
    if typing.get_origin(annotation) is typing.Literal:
        return [str(value) for value in typing.get_args(annotation)]
    found: list[str] = []
    for argument in typing.get_args(annotation):
        found.extend(choices(argument))
    return found


def describe_settings(settings_class: type[BaseSettings]) -> str:
    prefix = env_prefix(settings_class)
    lines = []
    for name, field in settings_class.model_fields.items():
        allowed = choices(field.annotation)
        text = field.description or ""
        if allowed:
            text += f"{'; ' if text else ''}one of: {', '.join(allowed)}"
        default = "unset" if field.default is None else field.default
        lines.append(f"  {prefix}{name.upper()}\n      {text}{'; ' if text else ''}default: {default}")
    return "settings:\n" + "\n".join(lines)


def _did_you_mean(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key.upper(), known, n=1, cutoff=0.6)
    return f": did you mean {close[0]}?" if close else ""


def unknown_keys(settings_class: type[BaseSettings], environ: Mapping[str, str],
                 env_file: Path | None) -> list[str]:
    """One line per unknown setting in the environment or the env file."""
    prefix = env_prefix(settings_class)
    known = [f"{prefix}{name.upper()}" for name in settings_class.model_fields]
    problems = [f"unknown setting {key} in the environment{_did_you_mean(key, known)}"
                for key in sorted(environ) if key.upper().startswith(prefix) and key.upper() not in known]
    if env_file is not None:
        for number, line in enumerate(env_file.read_text().splitlines(), start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            key = text.removeprefix("export ").split("=", 1)[0].strip()
            if "=" not in text:
                problems.append(f"{env_file}:{number}: not a KEY=VALUE line: {text[:60]!r}")
            elif key.upper() not in known:
                if key.upper().startswith(prefix):
                    problems.append(f"{env_file}:{number}: unknown setting {key}{_did_you_mean(key, known)}")
                else:
                    problems.append(f"{env_file}:{number}: not a {prefix}* setting: {key}")
    return problems


def validation_lines(error: ValidationError, prefix: str) -> list[str]:
    """One line per problem pydantic found: the setting, the value given, what is wrong."""
    lines = []
    for problem in error.errors():
        location = [str(part) for part in problem.get("loc", ())]
        name = f"{prefix}{location[0].upper()}" if location else "settings"
        value = problem.get("input")
        given = f"={value!r}" if location and isinstance(value, (str, int, float, bool)) else ""
        message = str(problem.get("msg", "invalid")).removeprefix("Value error, ")
        lines.append(f"{name}{given}: {message}")
    return lines


def load_settings(settings_class: type[SettingsT], module: str, doc: str | None,
                  *, argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> SettingsT:
    """`--help` listing every setting, and settings from the environment or `--config FILE`; a SettingsError
    (exit status 1, one line per problem) for anything that would not start the service as written."""
    prefix = env_prefix(settings_class)
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc,
                                     epilog=describe_settings(settings_class),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help=f"env file with {prefix}* settings (environment variables "
                        "override it)")
    args = parser.parse_args(argv)
    if args.config is not None and not args.config.is_file():
        raise SettingsError(f"{module}: settings: --config {args.config}: no such file")
    problems = unknown_keys(settings_class, os.environ if environ is None else environ, args.config)
    if problems:
        raise SettingsError(_report(module, problems))
    try:
        return settings_class(_env_file=args.config) if args.config else settings_class()
    except ValidationError as error:
        raise SettingsError(_report(module, validation_lines(error, prefix))) from None


def _report(module: str, problems: list[str]) -> str:
    sys.stderr.write("".join(f"{module}: settings: {problem}\n" for problem in problems))
    return f"{module}: {len(problems)} setting problem(s); see `python -m {module} --help`"
