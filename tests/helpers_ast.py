"""Parse source files into ASTs in a fresh interpreter, for the static checks over the code.

CPython 3.11 keeps the AST constructor's recursion depth in state shared by all threads, so
``ast.parse`` in a test process where another thread also builds an AST (Prefect, servers
left by earlier tests) can fail with ``SystemError: AST constructor recursion depth mismatch``
(CPython issue gh-106905, fixed in 3.12). A child process that only parses has no such thread;
the trees come back pickled (AST nodes pickle as plain Python objects).
"""

from __future__ import annotations

import functools
import pickle
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("omnifer", "tasks", "flows", "benchmarks")
_CHILD = """
import ast, pickle, sys
from pathlib import Path
root = Path(sys.argv[1])
trees = {}
for folder in sys.argv[2:]:
    for path in sorted((root / folder).rglob("*.py")):
        trees[str(path)] = ast.parse(path.read_text(), str(path))
sys.stdout.buffer.write(pickle.dumps(trees))
"""


@functools.cache
def _trees() -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(REPO), *FOLDERS],
                         check=True, capture_output=True).stdout
    return pickle.loads(out)


def parse(path: Path):  # -> ast.Module
    """The AST of ``path``, a ``.py`` file under one of ``FOLDERS`` of this checkout."""
    trees = _trees()
    key = str(path)
    if key not in trees:
        raise KeyError(f"{path} is not a source file under {', '.join(FOLDERS)}")
    return trees[key]
