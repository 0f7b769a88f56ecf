"""The imports of overdrive/ keep to the layers drawn in docs/architecture.dot.

The picture is the rule: each node of its layer clusters is a package or module, an edge ``A -> B`` says A may
import B (``ltail``/``lhead`` widen it to every node of a cluster), and a module may import whatever its node
reaches along the edges. Every ``import overdrive.X`` / ``from overdrive.X import ...`` in overdrive/ (inside
functions and ``TYPE_CHECKING`` blocks too) is checked, read with :mod:`ast` without importing anything.
"""

from __future__ import annotations

import ast
import configparser
import re
from collections.abc import Iterator
from pathlib import Path

from tests.services import ROOT

SOURCE = ROOT / "docs" / "architecture.dot"
PACKAGE = ROOT / "overdrive"


def _clusters_and_edges(text: str) -> tuple[dict[str, set[str]], set[str], list[tuple[str, str, dict[str, str]]]]:
    """(cluster -> its nodes, layer nodes, edges with attributes) of the layer part of the .dot source."""
    clusters: dict[str, set[str]] = {}
    stack: list[str] = []
    nodes: set[str] = set()
    edges: list[tuple[str, str, dict[str, str]]] = []
    for raw in text.splitlines():
        line = raw.split("//", 1)[0].strip()
        if opened := re.fullmatch(r"subgraph (\w+) \{", line):
            stack.append(opened.group(1))
            clusters.setdefault(opened.group(1), set())
        elif line == "}":
            if stack:
                stack.pop()
        elif edge := re.fullmatch(r'"([\w.]+)" -> "([\w.]+)"(?: \[(.*)\])?;', line):
            tail, head, attrs = edge.groups()
            if tail.startswith("overdrive.") and head.startswith("overdrive."):
                edges.append((tail, head, dict(re.findall(r"(\w+)=(\w+)", attrs or ""))))
        elif node := re.match(r'"(overdrive\.[\w.]+)" \[', line):
            nodes.add(node.group(1))
            for cluster in stack:
                clusters[cluster].add(node.group(1))
    return clusters, nodes, edges


def allowed_imports() -> dict[str, set[str]]:
    """Layer node -> the nodes it may import (itself included), from docs/architecture.dot."""
    clusters, nodes, edges = _clusters_and_edges(SOURCE.read_text())
    direct: dict[str, set[str]] = {node: set() for node in nodes}
    for tail, head, attrs in edges:
        tails = clusters[attrs["ltail"]] if "ltail" in attrs else {tail}
        heads = clusters[attrs["lhead"]] if "lhead" in attrs else {head}
        for source in tails:
            direct[source] |= heads
    reach: dict[str, set[str]] = {}
    for node in nodes:
        seen, todo = {node}, [node]
        while todo:
            for nxt in direct[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        reach[node] = seen
    return reach


def layer_of(module: str, nodes: set[str]) -> str | None:
    """The layer node a dotted module name belongs to (None: the package root ``overdrive`` itself)."""
    parts = module.split(".")
    for end in range(len(parts), 1, -1):
        prefix = ".".join(parts[:end])
        if prefix in nodes:
            return prefix
    if module == "overdrive":
        return None
    raise AssertionError(f"{module} is in no layer of docs/architecture.dot: add its node there")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def overdrive_imports() -> Iterator[tuple[str, str]]:
    """(importing module, imported overdrive module) for every import in overdrive/."""
    for path in sorted(PACKAGE.rglob("*.py")):
        here = _module_name(path)
        package = here if path.name == "__init__.py" else here.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "overdrive":
                        yield here, alias.name
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                if base.split(".")[0] != "overdrive":
                    continue
                if base == "overdrive":  # from overdrive import paths: a name is a module, or the root's own
                    for alias in node.names:
                        name = alias.name
                        own = not ((PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file())
                        yield here, "overdrive" if own else f"overdrive.{name}"
                else:
                    yield here, base


def violations() -> set[tuple[str, str]]:
    reach = allowed_imports()
    nodes = set(reach)
    found = set()
    for importer, imported in overdrive_imports():
        source, target = layer_of(importer, nodes), layer_of(imported, nodes)
        if source is None or target is None:
            continue  # the package root imports nothing and everyone may read its __version__
        if target not in reach[source]:
            found.add((importer, imported))
    return found


def test_the_picture_has_the_issue_10_layers() -> None:
    reach = allowed_imports()
    features = {"overdrive.index", "overdrive.transfer", "overdrive.media"}
    for feature in features:
        assert not (reach[feature] & features) - {feature}, f"{feature} may import another feature"
        assert {"overdrive.files", "overdrive.bus", "overdrive.errors"} <= reach[feature]
        assert "overdrive.app" not in reach[feature]
    assert features <= reach["overdrive.app"]
    assert "overdrive.cli" not in reach["overdrive.app"]
    base = {"overdrive.errors", "overdrive.paths", "overdrive.interrupts"}
    assert reach["overdrive.files"] == {"overdrive.files", *base}
    assert reach["overdrive.errors"] == {"overdrive.errors"}


def test_imports_keep_to_the_layers() -> None:
    found = sorted(violations())
    assert not found, "imports against docs/architecture.dot's layers:\n" + "\n".join(f"{a} -> {b}" for a, b in found)


def _contract() -> configparser.ConfigParser | None:
    """The import-linter settings (setup.cfg or .importlinter), if there are any."""
    for name in ("setup.cfg", ".importlinter"):
        parser = configparser.ConfigParser()
        parser.read(ROOT / name)
        if parser.has_section("importlinter:contract:layers"):
            return parser
    return None


def test_the_picture_agrees_with_the_import_contract() -> None:
    """The same rule in two places (picture and import-linter contract) must say the same: pair by pair."""
    parser = _contract()
    assert parser is not None, "no [importlinter:contract:layers] in setup.cfg or .importlinter"
    lines = [line for line in parser.get("importlinter:contract:layers", "layers").splitlines() if line.strip()]
    level = {name.strip(): i for i, line in enumerate(lines) for name in re.split(r"[|:]", line)}
    open_level = {i for i, line in enumerate(lines) if ":" in line}  # 'a : b' siblings may import each other
    reach = allowed_imports()
    assert set(reach) == set(level), "the picture's layer nodes and the contract's modules differ"
    for a in reach:
        for b in reach:
            by_contract = a == b or level[b] > level[a] or level[a] == level[b] in open_level
            assert (b in reach[a]) == by_contract, f"{a} -> {b}: picture says {b in reach[a]}, contract {by_contract}"
    independent = parser.get("importlinter:contract:features", "modules", fallback="").split()
    for a in independent:
        assert not (reach[a] & set(independent)) - {a}, f"{a} may import another independent feature in the picture"
