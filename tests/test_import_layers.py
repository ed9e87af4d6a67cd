"""The package's layers (docs/design.md, "Package layout"), read from the sources: each module imports only its own
layer and the ones it is allowed to build on, and no modules import each other in a cycle. A second check imports
the model and looks at what Python actually loaded."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "src" / "deepstack_hf"

# layer -> the layers its modules may import (besides its own); "model" is every module at the package's top
ALLOWED = {
    "model": set(),
    "conversion": {"model"},
    "training": {"model", "conversion"},
    "integrations": {"model"},
    "testing_utils": {"model", "conversion"},
}
# the one import across the rule: `deepstack-convert --verify` runs the independent reference of the original
EXCEPTIONS = {("deepstack_hf.conversion.convert_deepstack_to_hf", "deepstack_hf.testing_utils.original_reference")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else "model"


def imported_modules(module: str) -> set[str]:
    """The package's modules that `module` imports anywhere in its source (lazy imports in functions included),
    each resolved to a module file: `from .grid_layout import num_views` -> `deepstack_hf.grid_layout`,
    `from .. import grid_layout` -> `deepstack_hf.grid_layout`, `import deepstack_hf` -> `deepstack_hf`."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = ".".join(base[: len(base) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module
            targets = [f"{source}.{alias.name}" for alias in node.names] + [source]
        else:
            continue
        for target in targets:
            # the longest module path the name lies in (an imported attribute resolves to its module)
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target.startswith("deepstack_hf") and target != module:
                found.add(target)
    return found


GRAPH = {module: imported_modules(module) for module in MODULES}


def test_the_layers_are_where_the_design_says():
    assert {layer(module) for module in MODULES} == set(ALLOWED)
    assert layer("deepstack_hf.modeling_deepstack") == "model"
    assert layer("deepstack_hf.integrations.serving.app") == "integrations"
    assert "deepstack_hf.conversion.synthetic_checkpoint" not in MODULES  # test helpers left conversion/


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_imports_only_the_layers_below_it(module):
    own = layer(module)
    wrong = sorted(
        target for target in GRAPH[module]
        if layer(target) != own and layer(target) not in ALLOWED[own] and (module, target) not in EXCEPTIONS
    )
    assert not wrong, f"{module} ({own}) imports {wrong}"


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk of `graph` (module -> imported modules) closes, as the path around it."""
    cycles, state = [], {}

    def visit(module, stack):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    return cycles


def test_no_modules_import_each_other_in_a_cycle():
    cycles = find_cycles(GRAPH)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_cycle_finder_finds_a_known_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_the_import_reader_resolves_every_import_form():
    assert "deepstack_hf.grid_layout" in GRAPH["deepstack_hf.configuration_deepstack"]  # from .x import name
    assert "deepstack_hf.grid_layout" in GRAPH["deepstack_hf.integrations.vllm.processing"]  # from ... import x
    assert "deepstack_hf" in GRAPH["deepstack_hf.integrations.serving.cli"]  # import deepstack_hf
    # a lazy import inside a function
    assert "deepstack_hf.testing_utils.original_reference" in GRAPH["deepstack_hf.conversion.convert_deepstack_to_hf"]


def test_importing_the_model_loads_no_other_layer():
    code = (
        "import sys, deepstack_hf\n"
        "from deepstack_hf import DeepStackForConditionalGeneration, DeepStackProcessor\n"
        "print('\\n'.join(sorted(name for name in sys.modules if name.startswith('deepstack_hf.'))))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={"PYTHONPATH": str(PACKAGE_DIR.parent), "PATH": ""},
    ).stdout.split()
    assert "deepstack_hf.modeling_deepstack" in loaded
    assert [name for name in loaded if layer(name) != "model"] == []
