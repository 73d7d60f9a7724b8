"""The shape of the repository: commands at the root, the library in segtoolkit, imports pointing down,
and pyproject.toml declaring what requirements.txt pins."""

import ast
import tomllib

from segtoolkit.config import REPO

ROOT_MODULES = {path.stem for path in REPO.glob("*.py")}


def imported_modules(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module.split(".")[0]


def test_the_package_never_imports_a_root_file():
    back = {(path.name, module) for path in (REPO / "segtoolkit").glob("*.py") for module in imported_modules(path)
            if module in ROOT_MODULES}
    assert not back, back


def test_the_root_holds_the_commands_and_the_designs_files_only():
    assert ROOT_MODULES == {"train", "detect", "export", "val", "dataset", "dataloaders", "make_sample_data"}


def test_pyproject_declares_the_pins_of_requirements_txt():
    pinned = sorted(line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#"))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert sorted(project["dependencies"]) == pinned
    assert set(project["optional-dependencies"]["dev"]) == {line.strip() for line in
                                                            (REPO / "requirements-dev.txt").read_text().splitlines()
                                                            if line.strip() and not line.startswith("-r")}
