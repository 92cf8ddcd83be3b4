"""The house plan (DESIGN.md) checked on the tree: the import graph is a staircase, the files stay
readable in one sitting, and run.py runs the walk-throughs in the book's order."""

import ast
import importlib.util
import re
import subprocess
import sys

from conftest import REPO_DIR

ROOT_MODULES = {path.stem: path for path in REPO_DIR.glob("*.py")}
LETTERED = {name: name[0] for name in ROOT_MODULES if re.fullmatch(r"[a-z]_[a-z0-9_]+", name)}


def local_imports(path):
    """The root modules that the file at `path` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
    return found & set(ROOT_MODULES)


IMPORTS = {name: local_imports(path) for name, path in ROOT_MODULES.items()}


def test_a_lettered_script_imports_only_earlier_letters():
    for name, letter in LETTERED.items():
        later = sorted(dep for dep in IMPORTS[name] if dep in LETTERED and LETTERED[dep] >= letter)
        assert later == [], f"{name}.py imports {later}"


def test_a_module_beside_the_series_imports_only_letters_before_its_first_importer():
    for name in set(ROOT_MODULES) - set(LETTERED):
        importers = sorted(LETTERED[x] for x in LETTERED if name in IMPORTS[x])
        if importers:
            first = importers[0]
            too_late = sorted(dep for dep in IMPORTS[name] if dep in LETTERED and LETTERED[dep] >= first)
            assert too_late == [], f"{name}.py is imported by a {first}_ script but imports {too_late}"


def test_root_files_stay_readable_in_one_sitting():
    long_files = {name: n for name, path in ROOT_MODULES.items()
                  if (n := len(path.read_text(encoding="utf-8").splitlines())) > 450}
    assert long_files == {}


def test_functions_stay_short_except_the_walk_throughs():
    """About 80 lines at most; a chapter walk-through's main follows the book's order instead."""
    long_functions = []
    for name, path in ROOT_MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                walk_through = node.name == "main" and (name in LETTERED or name == "appendix_d")
                if length > 80 and not walk_through:
                    long_functions.append(f"{name}.{node.name}: {length} lines")
    assert long_functions == []


def load_run_py():
    spec = importlib.util.spec_from_file_location("run", REPO_DIR / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    return run


def test_run_py_runs_appendix_d_right_after_chapter_5():
    run = load_run_py()
    assert run.SERIES[0] == "a_tokenizer.py" and run.SERIES[-1] == "z_lora.py"
    assert run.SERIES.index("appendix_d.py") == run.SERIES.index("u_pretraining.py") + 1
    assert sorted(set(run.SERIES) - {"appendix_d.py"}) == sorted(f"{name}.py" for name in LETTERED)


def test_run_py_tests_each_file_whole_in_one_of_up_to_4_processes(monkeypatch):
    run = load_run_py()
    assert 1 <= run.TEST_WORKERS <= 4
    monkeypatch.setattr(run, "TEST_WORKERS", 3)
    assert run.pytest_workers() == ["-n", "3", "--dist", "loadfile"]
    monkeypatch.setattr(run, "TEST_WORKERS", 1)  # one core: pytest as it runs by default
    assert run.pytest_workers() == []


def test_run_py_help_shows_its_commands_and_succeeds():
    result = subprocess.run([sys.executable, str(REPO_DIR / "run.py"), "--help"], capture_output=True,
                            text=True)
    assert result.returncode == 0
    assert all(command in result.stdout for command in ("series", "test", "lint"))
