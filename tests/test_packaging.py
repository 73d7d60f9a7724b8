"""The shape of the repository: commands at the root, the library in segtoolkit, imports pointing down,
and pyproject.toml declaring what requirements.txt pins."""

import ast
import tomllib

from helpers.paths import REPO

ROOT_MODULES = {path.stem for path in REPO.glob("*.py")}


LIBRARY = sorted((REPO / "segtoolkit").rglob("*.py"))
# segtoolkit's layers, bottom first: a module imports its own layer and the ones before it, never a later one
LAYERS = [{"errors", "cli", "distributed"}, {"data"}, {"models"}, {"inference"}, {"evaluation"}, {"outputs"},
          {"training"}, {"export"}]


def full_names(path):
    """Every module `path` imports, dotted in full (`from segtoolkit.data import masks` gives
    segtoolkit.data.masks), lazy imports inside functions included."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def imported_modules(path):
    return {name.split(".")[0] for name in full_names(path)}


def layer(dotted):
    """The layer of a segtoolkit module (segtoolkit.data.masks -> 1), None for anything else."""
    parts = dotted.split(".")
    if parts[0] != "segtoolkit" or len(parts) < 2:
        return None
    return next((index for index, names in enumerate(LAYERS) if parts[1] in names), None)


def library_name(path):
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


def test_the_walk_sees_every_sub_package():
    # guards the tests below against passing on an empty walk
    assert {path.parent.name for path in LIBRARY} >= {"segtoolkit", *set().union(*LAYERS[1:])}
    assert len(LIBRARY) > 40


def test_the_package_never_imports_a_root_file():
    back = {(path.name, module) for path in LIBRARY for module in imported_modules(path) if module in ROOT_MODULES}
    assert not back, back


def test_every_library_module_belongs_to_a_layer():
    assert [library_name(path) for path in LIBRARY
            if layer(library_name(path)) is None and path.name != "__init__.py"] == []


def test_imports_point_down_the_layers():
    upward = [(library_name(path), name) for path in LIBRARY for name in full_names(path)
              if layer(name) is not None and layer(library_name(path)) is not None
              and layer(name) > layer(library_name(path))]
    assert not upward, upward


def test_the_layer_rule_catches_an_upward_import(tmp_path):
    # the rule itself: a data module importing the trainer's config would be refused
    assert layer("segtoolkit.training.config") > layer("segtoolkit.data.masks")
    source = tmp_path / "bad.py"
    source.write_text("def f():\n    from segtoolkit.training import config\n")
    assert "segtoolkit.training.config" in set(full_names(source))


def test_the_root_holds_the_commands_and_the_designs_files_only():
    assert ROOT_MODULES == {"train", "detect", "export", "val", "dataset", "dataloaders", "make_sample_data"}


def test_pyproject_declares_the_pins_of_requirements_txt():
    pinned = sorted(line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#"))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert sorted(project["dependencies"]) == pinned
    assert set(project["optional-dependencies"]["dev"]) == {line.strip() for line in
                                                            (REPO / "requirements-dev.txt").read_text().splitlines()
                                                            if line.strip() and not line.startswith(("-r", "#"))}
