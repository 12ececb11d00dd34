"""The layout's rules, checked on the source: no import cycle, small functions, layering."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("segmodel", "tasks", "flows")


def _modules():
    """``{dotted name: path}`` of every first-party module."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path, known):
    """First-party modules that ``path`` imports anywhere (function bodies too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from pkg import mod`` imports the module pkg.mod when there is one
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known
                     else node.module for a in node.names]
        else:
            continue
        out |= {n for n in names if n in known}
    return out


def _graph():
    known = _modules()
    return {name: _imports(path, known) - {name} for name, path in known.items()}


def _cycle(graph):
    """One import cycle as a list of modules, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_module_imports_itself_back_through_others():
    graph = _graph()
    assert len(graph) > 40  # the walk found the code
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_engine_imports_neither_prefect_nor_the_prefect_layer():
    for name, path in _modules().items():
        if not name.startswith("segmodel"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                        else [node.module or ""])
                bad = [m for m in mods if m.split(".")[0] in ("prefect", "prefect_dask",
                                                              "tasks", "flows")]
                assert not bad, f"{path.relative_to(ROOT)}:{node.lineno} imports {bad}"


def _functions():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield path.relative_to(ROOT), node


def _n_params(node):
    a = node.args
    n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs)
    n += (a.vararg is not None) + (a.kwarg is not None)
    return n - (1 if a.args and a.args[0].arg in ("self", "cls") else 0)


@pytest.mark.parametrize("limit", [60])
def test_no_function_is_longer_than_a_screen(limit):
    long = [f"{p}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for p, n in _functions() if n.end_lineno - n.lineno + 1 > limit]
    assert not long, long


def test_no_function_takes_more_than_eight_parameters():
    many = [f"{p}:{n.lineno} {n.name} ({_n_params(n)})" for p, n in _functions()
            if _n_params(n) > 8]
    assert not many, many


#: Prefect's internals: private modules (a leading underscore), the server's own package, and
#: the double-underscore environment variables Prefect sets for itself.
_PRIVATE_PREFECT = ("PREFECT__", "prefect._", "prefect.server.", "prefect.cli.")


def _private_prefect_uses(path):
    """``(line, text)`` of each import or string in ``path`` naming Prefect's internals."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value]
        else:
            continue
        found += [(node.lineno, n) for n in names if any(p in n for p in _PRIVATE_PREFECT)
                  or n.split(".")[:2] == ["prefect", "server"]]
    return found


def test_nothing_uses_prefects_private_api():
    """Prefect is used through its public API, settings and commands only."""
    paths = [p for d in (*PACKAGES, "benchmarks") for p in sorted((ROOT / d).rglob("*.py"))]
    used = [f"{p.relative_to(ROOT)}:{line} {text[:60]!r}"
            for p in paths for line, text in _private_prefect_uses(p)]
    assert not used, used


def test_the_private_api_check_finds_a_use(tmp_path):
    path = tmp_path / "m.py"
    path.write_text('import os\nfrom prefect.server.api import server\n'
                    'os.environ["PREFECT__SERVER_EPHEMERAL"] = "1"\n')
    assert [line for line, _ in _private_prefect_uses(path)] == [2, 3]


_SECTIONS = {"Returns", "Yields", "Raises", "Warns", "See Also", "Notes", "Examples",
             "Attributes", "Other Parameters", "References"}


def _documented_parameters(doc):
    """Names listed in a numpydoc ``Parameters`` section (``a, b : type`` lines), or None."""
    import inspect

    lines = inspect.cleandoc(doc).splitlines()
    if "Parameters" not in lines:
        return None
    names = set()
    for line in lines[lines.index("Parameters") + 2:]:
        if line.strip() in _SECTIONS:
            break
        if line and not line.startswith(" "):
            names |= {n.strip().lstrip("*") for n in line.split(" : ")[0].split(",")}
    return names


def _parameter_drift(path):
    """``(line, function, undocumented, unknown)`` of each public function in ``path`` with
    parameters whose docstring has no Parameters section naming exactly those."""
    drift = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or \
                node.name.startswith("_") or ast.get_docstring(node) is None:
            continue
        a = node.args
        params = {x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg)
                  if x is not None and x.arg not in ("self", "cls")}
        documented = _documented_parameters(ast.get_docstring(node)) or set()
        if params and documented != params:
            drift.append((node.lineno, node.name, sorted(params - documented),
                          sorted(documented - params)))
    return drift


def test_engine_docstrings_name_exactly_their_functions_parameters():
    """numpydoc Parameters sections follow the signatures (ruff does not check numpy style)."""
    drift = [f"{p.relative_to(ROOT)}:{line} {name}: undocumented {missing}, unknown {extra}"
             for p in sorted((ROOT / "segmodel").rglob("*.py"))
             for line, name, missing, extra in _parameter_drift(p)]
    assert not drift, drift


def test_the_docstring_check_finds_drift(tmp_path):
    path = tmp_path / "m.py"
    path.write_text('def f(a, b, *, c=1):\n    """F.\n\n    Parameters\n    ----------\n'
                    '    a, d : int\n    b : str\n        What b is.\n\n    Returns\n'
                    '    -------\n    x : int\n    """\n')
    assert _parameter_drift(path) == [(1, "f", ["c"], ["d"])]
    path.write_text('def g(a):\n    """G, its parameter unnamed."""\n')
    assert _parameter_drift(path) == [(1, "g", ["a"], [])]
