"""docs/architecture.md's examples match the code: every ``def name(...)`` it shows for a
module-level function of ours has that function's parameters, in order, keyword-only where the
code's are."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"


def public_functions() -> dict[str, list]:
    """Every public module-level function of anomalygen and resynth_models, by name."""
    found: dict[str, list] = {}
    for package in ("anomalygen", "resynth_models"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            module = importlib.import_module(info.name)
            for name, value in vars(module).items():
                if inspect.isfunction(value) and value.__module__ == info.name:
                    if not name.startswith("_") and value not in found.get(name, []):
                        found.setdefault(name, []).append(value)
    return found


def shown() -> list[tuple[str, str]]:
    """``(name, parameters)`` of every top-level ``def`` in the doc's code blocks."""
    out = []
    for block in re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S):
        for match in re.finditer(r"^def (\w+)\((.*?)\)\s*(?:->|$|#)", block, flags=re.M | re.S):
            out.append((match.group(1), " ".join(match.group(2).split())))
    return out


def signature(params: str) -> list[str]:
    """Parameter names, ``*`` marking where keyword-only ones start (as the doc writes them)."""
    args = ast.parse(f"def f({params}): pass").body[0].args  # type: ignore[attr-defined]
    names = [a.arg for a in args.posonlyargs + args.args]
    if args.vararg:
        names.append(f"*{args.vararg.arg}")
    elif args.kwonlyargs:
        names.append("*")
    names += [a.arg for a in args.kwonlyargs]
    return names + ([f"**{args.kwarg.arg}"] if args.kwarg else [])


def code_signature(function) -> list[str]:
    names, star = [], False
    for p in inspect.signature(function).parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            names.append(f"*{p.name}")
            star = True
        elif p.kind is p.KEYWORD_ONLY and not star:
            names += ["*", p.name]
            star = True
        elif p.kind is p.VAR_KEYWORD:
            names.append(f"**{p.name}")
        else:
            names.append(p.name)
    return names


def test_the_doc_s_functions_have_the_code_s_parameters() -> None:
    functions = public_functions()
    checked, wrong = 0, []
    for name, params in shown():
        candidates = functions.get(name, [])
        if len(candidates) != 1:
            continue  # a method, or a name two modules define: the doc's context says which
        checked += 1
        doc, code = signature(params), code_signature(candidates[0])
        if doc != code:
            wrong.append(f"{name}: the doc has ({', '.join(doc)}), the code ({', '.join(code)})")
    assert checked >= 20, checked  # the doc's examples are found (else this checks nothing)
    assert wrong == []
