"""`python tests/python_c.py CODE ARGS...` runs CODE as `python -c CODE ARGS...` would
(in `__main__`'s namespace, which has no `__file__`; `sys.argv` ['-c', ARGS...]; the working
directory first on `sys.path`), as a script under tests/: the suite's fork server
(tests/forkserver.py) starts a script under tests/ warm, never `python -c` (a fresh
interpreter spends seconds of a core importing torch). For the tests that start a small
program of their own text (what CODE defines pickles, as under `python -c`)."""

import sys as _sys

_code = compile(_sys.argv[1], "<string>", "exec")
_sys.argv = ["-c", *_sys.argv[2:]]
_sys.path[0] = ""  # `python -c`: the working directory, not this script's folder
del _sys
for _name in ("__file__", "__cached__"):  # `python -c` has neither
    globals().pop(_name, None)
del _name
exec(globals().pop("_code"), globals())  # in __main__'s own namespace, as `python -c`
