"""Names and one-line descriptions of the registered models, attacks, defenses and malicious
servers, without
importing them.

``gradleak list`` and ``--help`` must not import torch (it takes seconds). Attacks and models
register where they are defined (``@register_attack`` on a class with a ``name``;
``register("name", description=...)`` on a builder, with literal arguments); this module reads
those declarations from the source files with :mod:`ast`, so adding an attack or model still
touches only its own module. ``tests/test_registry.py`` checks that the catalog equals the live
registries.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent


def attacks() -> dict[str, str]:
    """Attack name -> the first line of its class docstring, for every registered attack."""
    found = {}
    for tree in _trees("attacks"):
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and _decorated(node, "register_attack"):
                name = _class_constant(node, "name")
                if name:
                    doc = ast.get_docstring(node) or name
                    found[name] = doc.strip().splitlines()[0]
    return dict(sorted(found.items()))


def models() -> dict[str, str]:
    """Model name -> its registered description."""
    found = {}
    for tree in _trees("models"):
        for node in ast.walk(tree):  # @register("name", description=...) or register(...)(f)
            if isinstance(node, ast.Call) and _name(node.func) == "register" and node.args:
                name = _literal(node.args[0])
                keywords = {k.arg: _literal(k.value) for k in node.keywords if k.arg}
                if isinstance(name, str):
                    found[name] = str(keywords.get("description", ""))
    return dict(sorted(found.items()))


def defenses() -> dict[str, str]:
    """Defense name -> ``stage: summary`` for every ``@register_defense(name, stage, summary)``."""
    found = {}
    for tree in _trees("defenses"):
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _name(node.func) == "register_defense":
                values = [_literal(a) for a in node.args[:3]]
                keywords = {k.arg: _literal(k.value) for k in node.keywords if k.arg}
                name, stage, summary = (values + [None] * 3)[:3]
                stage, summary = stage or keywords.get("stage"), summary or keywords.get("summary")
                if isinstance(name, str):
                    found[name] = f"{stage}: {summary}"
    return dict(sorted(found.items()))


def servers() -> dict[str, str]:
    """Malicious-server modification name -> ``name:key=default,...  summary (attack: NAME)``
    for every function decorated with ``@register_server(name, summary, attack=...)``."""
    found = {}
    for tree in _trees("malicious"):
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef):
                continue
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and _name(decorator.func) == "register_server":
                    name, summary = ([_literal(a) for a in decorator.args[:2]] + [None] * 2)[:2]
                    keywords = {k.arg: _literal(k.value) for k in decorator.keywords if k.arg}
                    params = [  # a required parameter has no default node
                        arg.arg if default is None else f"{arg.arg}={_literal(default)}"
                        for arg, default in zip(
                            node.args.kwonlyargs, node.args.kw_defaults, strict=True
                        )
                    ]
                    head = name + (":" + ",".join(params) if params else "")
                    found[name] = f"{head}  {summary} (attack: {keywords.get('attack')})"
    return dict(sorted(found.items()))


def _trees(package: str):
    for path in sorted((PACKAGE / package).glob("*.py")):
        yield ast.parse(path.read_text(), filename=str(path))


def _decorated(node: ast.ClassDef, decorator: str) -> bool:
    return any(_name(d) == decorator for d in node.decorator_list)


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _class_constant(node: ast.ClassDef, attribute: str):
    for statement in node.body:
        targets = statement.targets if isinstance(statement, ast.Assign) else []
        if isinstance(statement, ast.AnnAssign):
            targets = [statement.target]
        if any(isinstance(t, ast.Name) and t.id == attribute for t in targets):
            return _literal(statement.value)
    return None


def _literal(node: ast.AST | None):
    try:
        return ast.literal_eval(node) if node is not None else None
    except ValueError:
        return None
