"""Run by every Python process a test starts (conftest.py puts this folder on PYTHONPATH):
where tests/forkserver.py serves this process' program, it runs there and this process
only waits for it, passes on signals and exits as it did. Otherwise (no server, or a
program or an environment it does not serve) nothing happens here. See tests/forkserver.py.
"""

import os
import sys


def _process() -> dict:
    """What this process inherited besides its environment, which the server's children
    must share to run its program: namespaces (a private mount), ids, limits, umask, CPUs."""
    import resource

    umask = os.umask(0)
    os.umask(umask)
    names = ("mnt", "pid", "net", "uts", "ipc", "user", "cgroup")
    namespaces = {}
    for name in names:
        try:
            namespaces[name] = os.readlink(f"/proc/self/ns/{name}")
        except OSError:
            namespaces[name] = None
    limits = [name for name in dir(resource) if name.startswith("RLIMIT_")]
    return {
        "namespaces": namespaces,
        "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid(), sorted(os.getgroups())],
        "limits": {name: list(resource.getrlimit(getattr(resource, name))) for name in limits},
        "umask": umask,
        "cpus": sorted(os.sched_getaffinity(0)),
        "root": os.path.realpath("/proc/self/root"),
    }


def _served() -> None:
    path = os.environ.get("STPDIST_TEST_FORK_SERVER")
    if not path or not os.path.exists(path):
        return
    import json
    import signal
    import socket
    import struct

    try:  # a closed standard stream: the socket below would take its number
        for fd in (0, 1, 2):
            os.fstat(fd)
    except OSError:
        return
    argv = sys.orig_argv[1:]
    request = {
        "executable": sys.executable,
        "argv": argv,
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "flags": [getattr(sys.flags, name) for name in dir(sys.flags) if name[0] != "_" and
                  name != "dont_write_bytecode" and not callable(getattr(sys.flags, name))],
        "dont_write_bytecode": sys.flags.dont_write_bytecode,
        "warnoptions": sys.warnoptions,
        "xoptions": sys._xoptions,
        "process": _process(),
    }  # fmt: skip
    body = json.dumps(request).encode()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        socket.send_fds(conn, [struct.pack("!Q", len(body))], [0, 1, 2])
        conn.sendall(body)
        reader = conn.makefile("rb")
        first = reader.readline().decode().split(" ", 1)
    except OSError:
        conn.close()
        return
    if first[0] != "pid":  # refused ("no REASON"), or the server went away: run here
        conn.close()
        return
    pid = int(first[1])

    def forward(signum, frame):  # noqa: ANN001, ARG001
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGQUIT"):
        signal.signal(getattr(signal, name), forward)
    line = reader.readline().decode().split()
    if len(line) != 2 or line[0] != "exit":  # the server went away: so does the program
        forward(signal.SIGKILL, None)
        os._exit(1)
    code = int(line[1])
    if code < 0:  # killed by a signal: so is this process
        if -code not in (signal.SIGKILL, signal.SIGSTOP):  # those have no handler to set
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        code = 128 - code
    os._exit(code)


_served()
