"""`python tests/python_c.py CODE ARGS...` runs CODE as `python -c CODE ARGS...` would
(`__main__`, `sys.argv` ['-c', ARGS...], the working directory first on `sys.path`), as a
script under tests/: the suite's fork server (tests/forkserver.py) starts a script under
tests/ warm, never `python -c` (a fresh interpreter spends seconds of a core importing
torch). For the tests that start a small program of their own text."""

import sys

code = sys.argv[1]
sys.argv = ["-c", *sys.argv[2:]]
sys.path[0] = ""  # `python -c`: the working directory, not this script's folder
exec(compile(code, "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
