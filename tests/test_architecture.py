"""The import graph: the library never imports the tools, no module imports in a circle,
and imports run one way through the package's layers."""

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


COMMANDS = ("scdnn_tf.train", "scdnn_tf.evaluate", "scdnn_tf.export", "scdnn_tf.predict")
# Which subpackages each subpackage may import (besides itself). Commands sit on top;
# `utils` (CLI errors, quiet TF start, progress, drawing) is importable from everywhere.
ALLOWED = {
    "utils": set(),
    "data": {"utils"},
    "modeling": {"data", "utils"},
    "core": {"modeling", "data", "utils"},
    "evaluation": {"core", "modeling", "data", "utils"},
    "serving": {"evaluation", "core", "modeling", "data", "utils"},
    "engine": {"evaluation", "core", "modeling", "data", "utils"},
    "configs": set(),
}


def test_the_package_root_holds_only_the_commands():
    root = os.path.join(REPO_ROOT, "scdnn_tf")
    modules = sorted(n[:-3] for n in os.listdir(root) if n.endswith(".py"))
    assert modules == ["__init__", "evaluate", "export", "predict", "train"]
    subpackages = {n for n in os.listdir(root)
                   if os.path.isfile(os.path.join(root, n, "__init__.py"))}
    assert subpackages == set(ALLOWED)


def test_imports_run_one_way():
    graph = import_graph()
    offenders = []
    for module, deps in graph.items():
        if not module.startswith("scdnn_tf."):
            continue
        for dep in deps:
            if dep in COMMANDS and module != dep:
                offenders.append((module, dep))  # nothing imports a command
                continue
            if module in COMMANDS or dep == "scdnn_tf":
                continue
            source, target = module.split(".")[1], dep.split(".")[1]
            if target != source and target not in ALLOWED[source]:
                offenders.append((module, dep))
    assert not offenders, offenders


def test_commands_import_only_subpackages():
    graph = import_graph()
    for command in COMMANDS:
        assert graph[command], command
        assert all(d.startswith("scdnn_tf.") and d.count(".") >= 2 for d in graph[command]), (
            command, graph[command])


def test_the_graph_sees_imports():  # the checks above are only as good as the parser
    graph = import_graph()
    assert "scdnn_tf.core.restore" in graph["scdnn_tf.engine.trainer"]
    assert "scdnn_tf.evaluation.evaluator" in graph["scdnn_tf.engine.trainer"]
    assert "scdnn_tf.utils.cli" in graph["scdnn_tf.train"]
    assert "scdnn_tf.data.shapes" in graph["data_tools.make_shapes"]
