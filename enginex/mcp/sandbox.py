"""The launcher of stdio MCP servers: confines a process, then becomes it.

    python -I -m enginex.mcp.sandbox --memory-mb 512 --cpu-seconds 120 \\
        --keep-env PATH,LANG,HOME,API_TOKEN --user nobody --network none \\
        --workdir /tmp/enginex-mcp-x -- command arg...

Before ``execvpe`` it:

* keeps only the environment variables named by ``--keep-env``: whatever else the parent
  passed (the SDK adds a few of the platform's variables) is dropped;
* starts a new session (a process group of its own, which the client kills as a whole) and
  sets umask 077;
* **network** (``--network none``, the default): puts the process in a network namespace of
  its own, which has only a loopback interface that is down -- no connection leaves it, not
  even to 127.0.0.1 (the platform's own ports). As root it calls ``unshare(CLONE_NEWNET)``;
  otherwise ``unshare(CLONE_NEWUSER|CLONE_NEWNET)``. If the host allows neither, it refuses
  to start (exit 126) rather than run the server with network. ``--network host`` leaves the
  network as it is: the egress guard does not apply to stdio servers;
* **user** (when it runs as root or with CAP_SETUID): hands ``--workdir/home`` to the
  ``--user`` account (ENGINEX_MCP_STDIO_USER, default ``nobody``), makes ``--workdir``
  traversable but not writable for it, then drops to that account (``setgroups([])``,
  ``setgid``, ``setuid``) and checks that the drop cannot be undone. Root that cannot drop
  (unknown user, the user is root, the calls fail) refuses to start (exit 126);
* **user namespace**: moves the process into a user namespace of its own (best effort when
  the network needs none). Processes outside it -- the platform, other stdio servers running
  as the same account -- then cannot read each other's ``/proc/<pid>/environ`` or memory;
* sets ``no_new_privs`` (set-user-id programs gain nothing);
* sets resource limits: address space (RLIMIT_AS) to ``--memory-mb``, CPU time (RLIMIT_CPU)
  to ``--cpu-seconds`` (SIGXCPU, then SIGKILL 5 s later), open files (RLIMIT_NOFILE) to 256,
  file size (RLIMIT_FSIZE) to 64 MiB and no core dumps.

What this does not do (docs/MCP.md, "What the sandbox protects"): when the platform does not
run as root, the server runs as the platform's own user and can read every file that user
can (the data directory, the master key file); there is no file-system or system-call
confinement. Deployments that need it run the catalog commands in their own container or VM
wrapper.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import resource
import secrets
import sys
from pathlib import Path

from enginex.kit.process import (
    CLONE_NEWNET,
    CLONE_NEWUSER,
    PR_SET_DUMPABLE,
    PR_SET_NO_NEW_PRIVS,
    prctl,
    unshare,
)

MAX_OPEN_FILES = 256
MAX_FILE_BYTES = 64 * 1024 * 1024
CPU_GRACE_SECONDS = 5
CAP_SETUID = 7
REFUSED_EXIT = 126  # like a shell's "found but cannot run"
AUTO_USER = "auto"
# uids/gids handed out by ``auto``: far above any account of a normal host (and below 2**31).
AUTO_IDS = range(1_600_000_000, 1_700_000_000)


class SandboxRefused(Exception):
    """The process cannot be confined as asked; it must not start. Says why and what to do."""


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
    parser.add_argument("--user", default=AUTO_USER,
                        help="the account to run as when started as root ('auto': a uid of "
                             "its own)")
    parser.add_argument("--network", choices=("none", "host"), default="none")
    parser.add_argument("--workdir", default=None,
                        help="the server's directory; its 'home' is handed to --user")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        parser.error("no command given after --")
    if args.memory_mb < 16 or args.cpu_seconds < 1:
        parser.error("--memory-mb must be >= 16 and --cpu-seconds >= 1")
    return args


def has_capability(bit: int) -> bool:
    """Whether this process has the capability in its effective set (Linux)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def can_change_user() -> bool:
    return os.geteuid() == 0 or has_capability(CAP_SETUID)


def target_account(name: str) -> tuple[int, int]:
    """(uid, gid) of the account to run as; SandboxRefused for an unknown account or root.

    ``auto`` (the default): a uid and gid of their own for this server, drawn at random from
    AUTO_IDS, which no account on the host uses. Two servers -- of two organizations, or two
    steps of one -- then cannot write each other's home, read each other's files or signal
    each other, as they could when both ran as one shared account."""
    if name == AUTO_USER:
        uid = AUTO_IDS.start + secrets.randbelow(len(AUTO_IDS))
        return uid, uid
    try:
        entry = pwd.getpwnam(name)
        uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        if not name.isdigit():
            raise SandboxRefused(f"the account '{name}' (ENGINEX_MCP_STDIO_USER) does not "
                                 "exist on this host; create it or name another") from None
        uid = gid = int(name)
    if uid == 0:
        raise SandboxRefused(f"ENGINEX_MCP_STDIO_USER='{name}' is root; name an unprivileged "
                             "account such as nobody")
    return uid, gid


def hand_over(workdir: str, uid: int, gid: int) -> None:
    """Let the account use ``workdir/home`` (its cwd and HOME): the home becomes its own; the
    work directory stays the platform's (it holds the stderr file) but becomes traversable."""
    os.chmod(workdir, 0o711)  # noqa: S103 - traverse only: no listing, no writing
    os.chown(os.path.join(workdir, "home"), uid, gid, follow_symlinks=False)


def drop_privileges(uid: int, gid: int) -> None:
    """Become uid/gid for good; SandboxRefused if that fails or could be undone."""
    try:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    except OSError as exc:
        raise SandboxRefused(f"cannot switch to uid {uid}: {exc.strerror}") from None
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise SandboxRefused(f"the switch to uid {uid} is incomplete")
    try:
        os.setuid(0)
    except OSError:
        return
    raise SandboxRefused("the switch away from root could be undone")


def _map_ids(uid: int, gid: int) -> None:
    """Inside a new user namespace, be the same uid/gid (an unmapped uid could not create
    files). After the switch from root the process is not dumpable, which makes its
    /proc/self files root's: it becomes dumpable for the writes (execve decides afresh)."""
    with contextlib.suppress(OSError):
        prctl(PR_SET_DUMPABLE, 1)
        try:
            Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1\n")
            Path("/proc/self/setgroups").write_text("deny\n")
            Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1\n")
        finally:
            prctl(PR_SET_DUMPABLE, 0)


def confine(args: argparse.Namespace) -> None:
    """Network namespace, account, user namespace and no_new_privs, as the module docstring
    says. Raises SandboxRefused when the process must not start."""
    network_isolated = args.network == "host"
    uid, gid = os.geteuid(), os.getegid()
    if can_change_user():
        uid, gid = target_account(args.user)
        if not network_isolated:
            with contextlib.suppress(OSError):
                unshare(CLONE_NEWNET)
                network_isolated = True
        if args.workdir:
            try:
                hand_over(args.workdir, uid, gid)
            except OSError as exc:
                raise SandboxRefused(f"cannot hand the working directory to uid {uid}: "
                                     f"{exc.strerror}") from None
        drop_privileges(uid, gid)
    flags = CLONE_NEWUSER | (0 if network_isolated else CLONE_NEWNET)
    try:
        unshare(flags)
    except OSError as exc:
        if not network_isolated:
            raise SandboxRefused(
                "the catalog entry has network off, but this host cannot give the server a "
                f"network namespace of its own (unshare: {exc.strerror or exc}); run EngineX as "
                "root, allow unprivileged user namespaces (user.max_user_namespaces, "
                "kernel.unprivileged_userns_clone, the container's seccomp profile), or let "
                "the platform admin turn network on for the entry") from None
    else:
        _map_ids(uid, gid)
    with contextlib.suppress(OSError):
        prctl(PR_SET_NO_NEW_PRIVS, 1)


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    keep = {name for name in args.keep_env.split(",") if name}
    env = {k: v for k, v in os.environ.items() if k in keep}
    try:
        os.setsid()
    except PermissionError:
        pass  # already a session leader (the client starts us with start_new_session)
    os.umask(0o077)
    try:
        confine(args)
    except SandboxRefused as exc:
        print(f"enginex.mcp.sandbox: refusing to start {args.command[0]!r}: {exc}.",
              file=sys.stderr)
        sys.exit(REFUSED_EXIT)
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
