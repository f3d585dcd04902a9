"""Run model-written Python in isolation: bubblewrap (no network, a scratch dir, time and memory limits).

`run_python(code)` writes `code` to a fresh scratch dir and runs it with `python3 -I` inside
`bwrap --unshare-all` (own network, PID, IPC, UTS and user namespaces: no network at all), with
the system's /usr mounted read-only, an empty /tmp, the scratch dir as the only writable place,
an empty environment, a wall-clock timeout (the whole sandbox is killed) and an address-space
limit. If `bwrap` is not installed (Debian: `apt-get install bubblewrap`) it falls back to a plain
subprocess with rlimits, a timeout, an empty environment and the scratch dir as cwd — that is NOT
a sandbox (the code can still reach the network and the file system) and every result says so in
`isolation`. Pass `allow_fallback=False` to refuse instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from llmtwin.errors import TwinError

FALLBACK = "restricted-subprocess (NOT isolated: bwrap missing)"


@dataclass
class SandboxResult:
    returncode: int | None  # None: killed by the timeout
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float
    isolation: str  # "bwrap" or FALLBACK

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def _interpreter() -> tuple[str, list[str]]:
    """(python inside the sandbox, extra bwrap args to make it visible)."""
    if Path("/usr/bin/python3").exists():
        return "/usr/bin/python3", []
    base = Path(sys.base_prefix)
    exe = Path(os.path.realpath(sys.executable))
    return str(exe), ["--ro-bind", str(base), str(base)]


def _bwrap_argv(bwrap: str, scratch: Path, script: str) -> list[str]:
    python, extra = _interpreter()
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr"]
    for top in ("/lib", "/lib64", "/bin", "/sbin", "/lib32"):
        p = Path(top)
        if p.is_symlink():
            argv += ["--symlink", os.readlink(p), top]
        elif p.is_dir():
            argv += ["--ro-bind", top, top]
    argv += extra
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--bind", str(scratch), "/sandbox",
             "--chdir", "/sandbox", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin",
             "--setenv", "HOME", "/sandbox", "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
             python, "-I", script]
    return argv


def _limited(argv: list[str], memory_mb: int, cpu_s: int) -> tuple[list[str], object]:
    """argv run under rlimits: through util-linux `prlimit` when present (no code between fork and exec,
    safe next to training threads), else a preexec_fn."""
    limit = memory_mb * 1024 * 1024
    fsize = 16 * 1024 * 1024
    prlimit = shutil.which("prlimit")
    if prlimit:
        return [prlimit, f"--as={limit}", f"--cpu={cpu_s}", f"--fsize={fsize}", "--core=0", "--", *argv], None

    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return argv, apply


def run_python(code: str, *, timeout: float = 5.0, memory_mb: int = 512, allow_fallback: bool = True,
               max_output: int = 20_000, stdin: str | None = None) -> SandboxResult:
    """Run `code` as a script in the sandbox; stdout/stderr are cut to `max_output` characters."""
    bwrap = bwrap_path()
    if bwrap is None and not allow_fallback:
        raise TwinError("bubblewrap (`bwrap`) is not installed: install it (apt-get install bubblewrap) to run code rewards")
    scratch = Path(tempfile.mkdtemp(prefix="twin-sandbox-"))
    try:
        (scratch / "main.py").write_text(code, encoding="utf-8")
        if bwrap is not None:
            argv, cwd, env, isolation = _bwrap_argv(bwrap, scratch, "main.py"), None, {}, "bwrap"
        else:
            argv, cwd, env, isolation = [sys.executable, "-I", "main.py"], scratch, {"PATH": "/usr/bin:/bin"}, FALLBACK
        argv, preexec = _limited(argv, memory_mb, int(timeout) + 1)
        started = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True,
                                preexec_fn=preexec)  # noqa: PLW1509 (only without prlimit)
        try:
            out, err = proc.communicate(input=stdin, timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # bwrap and (via --die-with-parent) everything inside
            except ProcessLookupError:
                pass
            out, err = proc.communicate()
            timed_out = True
        return SandboxResult(
            returncode=None if timed_out else proc.returncode,
            stdout=out[:max_output], stderr=err[:max_output], timed_out=timed_out,
            seconds=round(time.perf_counter() - started, 3), isolation=isolation,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
