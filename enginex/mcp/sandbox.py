"""The launcher of stdio MCP servers: bounds a process, then becomes it.

    python -I -m enginex.mcp.sandbox --memory-mb 512 --cpu-seconds 120 \\
        --keep-env PATH,LANG,HOME,API_TOKEN -- command arg...

Before ``execvpe`` it:

* sets resource limits: address space (RLIMIT_AS) to ``--memory-mb``, CPU time (RLIMIT_CPU)
  to ``--cpu-seconds`` (SIGXCPU, then SIGKILL 5 s later), open files (RLIMIT_NOFILE) to 256,
  file size (RLIMIT_FSIZE) to 64 MiB and no core dumps;
* starts a new session (a process group of its own, which the client kills as a whole);
* sets umask 077;
* keeps only the environment variables named by ``--keep-env``: whatever else the parent
  passed (the SDK adds a few of the platform's variables) is dropped.

These are resource bounds for a platform-approved command, not a security boundary against
hostile code: the catalog is the trust decision. Deployments that need stronger isolation run
the catalog commands inside their own container or VM wrapper.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys

MAX_OPEN_FILES = 256
MAX_FILE_BYTES = 64 * 1024 * 1024
CPU_GRACE_SECONDS = 5


def _limit(which: int, soft: int, hard: int | None = None) -> None:
    _, current_hard = resource.getrlimit(which)
    hard = soft if hard is None else hard
    if current_hard != resource.RLIM_INFINITY:
        hard = min(hard, current_hard)
        soft = min(soft, hard)
    resource.setrlimit(which, (soft, hard))


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="enginex.mcp.sandbox")
    parser.add_argument("--memory-mb", type=int, required=True)
    parser.add_argument("--cpu-seconds", type=int, required=True)
    parser.add_argument("--keep-env", default="PATH,LANG,HOME")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        parser.error("no command given after --")
    if args.memory_mb < 16 or args.cpu_seconds < 1:
        parser.error("--memory-mb must be >= 16 and --cpu-seconds >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    keep = {name for name in args.keep_env.split(",") if name}
    env = {k: v for k, v in os.environ.items() if k in keep}
    try:
        os.setsid()
    except PermissionError:
        pass  # already a session leader (the client starts us with start_new_session)
    os.umask(0o077)
    _limit(resource.RLIMIT_AS, args.memory_mb * 1024 * 1024)
    _limit(resource.RLIMIT_CPU, args.cpu_seconds, args.cpu_seconds + CPU_GRACE_SECONDS)
    _limit(resource.RLIMIT_NOFILE, MAX_OPEN_FILES)
    _limit(resource.RLIMIT_FSIZE, MAX_FILE_BYTES)
    _limit(resource.RLIMIT_CORE, 0)
    try:
        os.execvpe(args.command[0], args.command, env)  # noqa: S606 - no shell, on purpose
    except OSError as exc:
        print(f"enginex.mcp.sandbox: cannot start {args.command[0]!r}: {exc.strerror}",
              file=sys.stderr)
        sys.exit(127)


if __name__ == "__main__":
    main()
