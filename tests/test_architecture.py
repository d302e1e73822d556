"""The import graph: the library never imports the tools, and no module imports in a circle."""

import ast
import os

from helpers import REPO_ROOT

PACKAGES = ("scdnn_tf", "data_tools")


def _module_name(path):
    rel = os.path.relpath(path, REPO_ROOT)[:-len(".py")].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def import_graph():
    """{module: set of project modules it imports} (top-level and function-level imports)."""
    modules = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(REPO_ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    modules[_module_name(os.path.join(folder, name))] = os.path.join(folder, name)
    graph = {}
    for module, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        deps = set()
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import submodule` depends on the submodule; `from mod import name`
                # on the module.
                subs = [f"{node.module}.{a.name}" for a in node.names
                        if f"{node.module}.{a.name}" in modules]
                names = subs if len(subs) == len(node.names) else [node.module] + subs
            deps.update(n for n in names if n in modules)
        deps.discard(module)
        graph[module] = deps
    return graph


def test_the_library_never_imports_the_tools():
    offenders = {m: sorted(d for d in deps if d.startswith("data_tools"))
                 for m, deps in import_graph().items() if m.startswith("scdnn_tf")}
    assert not {m: d for m, d in offenders.items() if d}


def test_no_import_cycles():
    graph = import_graph()
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, cycles


def test_the_graph_sees_imports():  # the checks above are only as good as the parser
    graph = import_graph()
    assert "scdnn_tf.run_dir" in graph["scdnn_tf.training"]
    assert "scdnn_tf.data.shapes" in graph["data_tools.make_shapes"]
