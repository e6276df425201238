"""A call names what it passes once a function takes five or more parameters: past its first three, every
parameter of such a function in `services/` is keyword-only, so that `train_local(model, data, config,
device=..., generator=...)` cannot silently swap two arguments of one type. The check runs on a deliberate
violation too, so that it can fail."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
MOST_POSITIONAL = 3  # of a function with five or more parameters (self and cls not counted)


def long_positional_lists(source: str) -> list[str]:
    """`name (n positional)` for each function of `source` with five or more parameters that takes more than
    three of them positionally."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            positional = [a.arg for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")]
            if len(positional) + len(node.args.kwonlyargs) >= 5 and len(positional) > MOST_POSITIONAL:
                found.append(f"{node.name} ({len(positional)} positional)")
    return found


def test_no_function_in_services_takes_more_than_three_of_five_or_more_parameters_positionally() -> None:
    offenders = [f"{path.relative_to(REPO)}: {name}" for path in sorted((REPO / "services").rglob("*.py"))
                 if "_pb2" not in path.name for name in long_positional_lists(path.read_text())]
    assert offenders == []


@pytest.mark.parametrize(("source", "caught"), [
    ("def f(a, b, c, d, e): ...", ["f (5 positional)"]),
    ("class C:\n    def m(self, a, b, c, d, *, e=1): ...", ["m (4 positional)"]),
    ("def f(a, b, c, *, d, e): ...", []),
    ("def f(self, a, b, c, d): ...", []),  # four parameters: short enough
])
def test_a_deliberate_long_positional_list_is_caught(source: str, caught: list[str]) -> None:
    assert long_positional_lists(source) == caught
