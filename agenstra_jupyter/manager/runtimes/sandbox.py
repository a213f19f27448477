"""What a process agent sees: a bubblewrap command line built from an allow-list.

The sandbox starts from an empty root and adds only: system directories read-only, an
allow-list of `/etc`, the agent's workspace and private HOME read-write, a private `/tmp`,
its own `/proc` and a minimal `/dev`, and the installation of the program it runs (read-only).
Everything else (the user's HOME, Jupyter's directories, the manager's data, `/run`,
`/var`, other workspaces, UNIX sockets) does not exist inside. Secret directories that fall
inside an installation that must be bound (a virtualenv's `share/jupyter`) are covered up.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# What of /etc a program needs to run: users and groups, name resolution, libraries,
# certificates, time zones. Never shadow files, keys (/etc/ssl/private) or service configs.
ETC_ALLOWED = (
    "passwd", "group", "hosts", "hostname", "host.conf", "nsswitch.conf", "gai.conf",
    "services", "protocols", "networks", "localtime", "timezone", "ld.so.cache", "ld.so.conf",
    "ld.so.conf.d", "alternatives", "ssl/certs", "ssl/openssl.cnf", "ca-certificates",
    "ca-certificates.conf", "pki/tls/certs", "crypto-policies", "mime.types", "magic",
    "os-release", "debian_version", "lsb-release", "environment", "profile", "bash.bashrc",
    "inputrc", "terminfo", "fonts", "locale.alias", "python3",
)  # not gitconfig or npmrc: they can carry credentials
# Kernel interfaces under /proc that must stay read-only even to a root-mapped sandbox.
PROC_READ_ONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs")
# Never bound as an agent's script, whatever the command line says.
NEVER_SCRIPT = ("/proc", "/sys", "/dev", "/etc", "/run", "/var/run", "/boot")
# Interpreters whose first argument, an absolute path, is the program itself (bound with it).
INTERPRETERS = ("python", "node", "deno", "bun", "ruby", "perl")
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
# Run first in a sandbox whose network is made from outside: "ready", then wait for "go".
# (dash takes no fd above 9 in redirections, hence /dev/fd; both pipes are spent after.)
GATE = 'printf 1 >"/dev/fd/$1"; read -r _ <"/dev/fd/$2"; shift 2; exec "$@"'
# Where slirp4netns's DNS forwarder answers inside the sandbox's network namespace.
SLIRP_DNS = "10.0.2.3"


@dataclass(frozen=True)
class Limits:
    """Resource limits of every process in the sandbox (prlimit; 0 means unlimited)."""

    memory: int = 0  # bytes of data segment and private writable mappings (RLIMIT_DATA)
    processes: int = 0  # RLIMIT_NPROC (the kernel does not apply it to a root manager)
    file_size: int = 0  # largest file a process may write (RLIMIT_FSIZE)
    cpu_seconds: int = 0  # CPU time of each process (RLIMIT_CPU)

    def prlimit(self) -> list[str]:
        wanted = {"--data": self.memory, "--nproc": self.processes,
                  "--fsize": self.file_size, "--cpu": self.cpu_seconds}
        limits = [f"{flag}={value}" for flag, value in wanted.items() if value > 0]
        return ["prlimit", "--core=0", *limits, "--"] if shutil.which("prlimit") else []


@dataclass
class Program:
    """The agent's command resolved on the manager's PATH, with what it needs to run."""

    argv: list[str]
    binds: list[Path] = field(default_factory=list)  # read-only installation directories
    path_dirs: list[str] = field(default_factory=list)  # prepended to the sandbox's PATH


@dataclass
class SandboxSpec:
    workspace: Path
    home: Path
    program: Program
    secrets: list[Path]
    limits: Limits = field(default_factory=Limits)
    network: bool = False  # egress through slirp4netns (set up after the sandbox starts)
    bwrap: str = "bwrap"  # its absolute path, found on the manager's PATH
    tmp_size: int = 0  # bytes of the private /tmp (RAM); 0: the kernel's default
    resolv_conf: Path | None = None  # bound over /etc/resolv.conf when network is on
    # An open O_PATH descriptor of the workspace (a project: the user's folder), bound
    # instead of its path, so a folder swapped for a symlink after the check is not followed.
    workspace_fd: int | None = None
    # An O_PATH descriptor of the project's `.git` directory, bound read-only over it: git
    # runs hooks and `core.fsmonitor` commands from there outside any sandbox, when the
    # user (or JupyterLab's git panel) runs git in the folder.
    git_fd: int | None = None
    # The same `.git`, bound read-only by path where bwrap binds no descriptors (< 0.7).
    git_dir: Path | None = None


def secret_paths(extra: Iterable[str | Path] = (), environ: Mapping[str, str] = os.environ
                 ) -> list[Path]:
    """Directories no sandbox may show: the user's HOME, every Jupyter directory, `extra`."""
    from jupyter_core import paths

    found: list[str | Path] = [Path.home(), paths.jupyter_data_dir(), paths.jupyter_runtime_dir(),
                               paths.jupyter_config_dir(), *paths.jupyter_path(),
                               *paths.jupyter_config_path(), "/run", "/var/run", *extra]
    found += [value for name, value in environ.items()
              if name.startswith("JUPYTER_") and value.startswith("/")]
    # Both spellings: binds are judged on real paths, and HOME may be a symlink.
    absolute = [Path(os.path.abspath(p)) for p in found]
    return _unique([*absolute, *(p.resolve() for p in absolute)])


def resolve_program(argv: list[str], search_path: str, secrets: list[Path],
                    writable: list[Path] | None = None) -> Program:
    """Find argv[0] on the manager's PATH and the installation it runs from.

    A program under /usr needs nothing more. Otherwise its installation is bound read-only:
    the outermost `node_modules` of an npm package, a virtualenv and its base interpreter,
    or the prefix of a `bin/` directory, and the same for its `#!` interpreter. A tree that
    holds the user's HOME is never bound whole (only the program file is), nor anything
    inside a secret directory. A program in `writable` (agents' workspaces and homes) gets
    nothing bound: its venv config and `#!` line are the agent's to forge.
    """
    found = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=search_path)
    if not found:
        return Program(list(argv))  # the sandbox reports "not found" as the command would
    program = Program([os.path.abspath(found), *argv[1:]])
    writable = writable or []
    where = (Path(program.argv[0]), Path(found).resolve())
    if any(_contains(root, path) for root in writable for path in where):
        return program  # the agent's own files: nothing of theirs is trusted
    _add_installation(program, Path(program.argv[0]), search_path, secrets, depth=2)
    if Path(found).name.rstrip("0123456789.").startswith(INTERPRETERS) and len(argv) > 1:
        _add_script(program, argv[1], secrets, writable)
    return program


def _add_script(program: Program, arg: str, secrets: list[Path], writable: list[Path]) -> None:
    """`python /path/agent.py`: the script's directory (its modules), or only the script."""
    script = Path(arg).resolve()
    if not arg.startswith("/") or not script.is_file() or any(
        _contains(root, script) for root in [*map(Path, NEVER_SCRIPT), *secrets, *writable]
    ):
        return
    roots = _installation_roots(script)
    root = roots[0] if "node_modules" in script.parts else script.parent
    if _is_system(root):
        return
    if _too_broad(root, secrets):
        root = script
    if root not in program.binds:
        program.binds.append(root)


def _add_installation(program: Program, path: Path, search_path: str, secrets: list[Path],
                      depth: int) -> None:
    real = path.resolve()
    for candidate in (path, real):
        if _is_system(candidate):
            continue  # visible as it is
        for root in _installation_roots(candidate):
            if _is_system(root) or _inside_secret(root, secrets):
                continue
            if _too_broad(root, secrets):
                root = candidate  # the program file alone
            if root not in program.binds:
                program.binds.append(root)
    if str(path.parent) not in program.path_dirs and not _is_system(path):
        program.path_dirs.append(str(path.parent))
    interpreter = _interpreter(real, search_path)
    if interpreter is not None and depth > 0:
        _add_installation(program, interpreter, search_path, secrets, depth - 1)


def _installation_roots(path: Path) -> list[Path]:
    if "node_modules" in path.parts:
        return [Path(*path.parts[: path.parts.index("node_modules") + 1])]
    for parent in list(path.parents)[:2]:
        config = parent / "pyvenv.cfg"
        if config.is_file():
            return [parent, *_venv_base(config)]
    homes = (Path.home(), Path.home().resolve())
    if path.parent.name in ("bin", "sbin") and path.parent.parent not in homes:
        prefix = path.parent.parent
        if prefix.parent not in homes:  # ~/.local is a user's whole data, not an install
            return [prefix]
    return [path.parent]


def _venv_base(config: Path) -> list[Path]:
    for line in config.read_text(errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "home" and value.strip():
            return [Path(value.strip()).resolve().parent]
    return []


def _interpreter(path: Path, search_path: str) -> Path | None:
    """The program named by a script's `#!` line (through `env`), if any."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].decode(errors="replace").split()
    if words and words[0].endswith("/env"):
        words = [w for w in words[1:] if not w.startswith("-")]
        found = shutil.which(words[0], path=search_path) if words else None
        return Path(found) if found else None
    return Path(words[0]) if words else None


def bwrap_argv(spec: SandboxSpec, gate: tuple[int, int, int] | None = None) -> list[str]:
    """The whole bubblewrap command line (then the limits, then the program).

    With `gate` (ready, block and status fds), bwrap reports the sandbox's pid on the
    status fd; once inside, the sandbox says so on the ready fd and waits on the block fd
    (its network is made meanwhile). bwrap's own --block-fd cannot be used: bwrap is still
    configuring the namespace's loopback when it reports the pid.
    """
    args = [spec.bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop",
            "ALL", "--proc", "/proc", "--dev", "/dev"]
    for path in PROC_READ_ONLY:  # a root manager's sandbox is uid 0: /proc/sys must not be
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    if spec.tmp_size:
        args += ["--size", str(spec.tmp_size)]
    args += ["--tmpfs", "/tmp"]
    for name in SYSTEM_DIRS:
        if os.path.islink(name):
            args += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            args += ["--ro-bind", name, name]
    for name in ETC_ALLOWED:
        path = f"/etc/{name}"
        if name == "resolv.conf" or not os.path.lexists(path):
            continue
        args += ["--ro-bind", path, path]
    resolv = spec.resolv_conf if spec.network else Path("/etc/resolv.conf")
    if resolv is not None and resolv.is_file():
        args += ["--ro-bind", str(resolv), "/etc/resolv.conf"]
    for root in spec.program.binds:
        if root.exists():
            args += ["--ro-bind", str(root), str(root)]
    args += _cover_secrets([Path("/usr"), *spec.program.binds], spec.secrets)
    workspace = ["--bind", str(spec.workspace)] if spec.workspace_fd is None else \
        ["--bind-fd", str(spec.workspace_fd)]
    args += ["--bind", str(spec.home), str(spec.home),
             *workspace, str(spec.workspace), "--chdir", str(spec.workspace)]
    if spec.git_fd is not None:
        args += ["--ro-bind-fd", str(spec.git_fd), str(spec.workspace / ".git")]
    elif spec.git_dir is not None:
        args += ["--ro-bind", str(spec.git_dir), str(spec.workspace / ".git")]
    args += ["--remount-ro", "/"]  # the skeleton around the binds is not a place to write
    if gate is None:
        return [*args, "--", *spec.limits.prlimit(), *spec.program.argv]
    ready_fd, block_fd, status_fd = gate
    return [*args, "--json-status-fd", str(status_fd), "--", "sh", "-c", GATE, "sh",
            str(ready_fd), str(block_fd), *spec.limits.prlimit(), *spec.program.argv]


def _cover_secrets(binds: list[Path], secrets: list[Path]) -> list[str]:
    """Hide secret directories that lie inside a bound installation."""
    args: list[str] = []
    for secret in secrets:
        if any(_contains(root, secret) for root in binds) and secret.exists():
            args += ["--tmpfs", str(secret)] if secret.is_dir() else \
                ["--ro-bind", "/dev/null", str(secret)]
    return args


def sandbox_environment(spec: SandboxSpec, extra: Mapping[str, str] | None) -> dict[str, str]:
    """A clean environment: nothing of the manager's but locale and time zone."""
    env = {key: os.environ[key] for key in ("LANG", "LC_ALL", "TZ") if key in os.environ}
    env.update(
        PATH=":".join([*spec.program.path_dirs, SYSTEM_PATH]),
        HOME=str(spec.home), TMPDIR="/tmp", TERM="dumb", AGENSTRA_WORKSPACE=str(spec.workspace),
    )
    env.update({key: value for key, value in (extra or {}).items() if not loader_variable(key)})
    return env


def loader_variable(name: str) -> bool:
    """Variables that change how the host-side bwrap itself is loaded: never set."""
    return name.startswith(("LD_", "GLIBC_", "MALLOC_")) or name in ("GCONV_PATH", "LOCPATH")


def _inside_secret(path: Path, secrets: list[Path]) -> bool:
    """Within a secret directory other than HOME itself (installations may live in HOME)."""
    homes = (Path.home(), Path.home().resolve())
    return any(_contains(secret, path) for secret in secrets if secret not in homes)


def _too_broad(root: Path, secrets: list[Path]) -> bool:
    """A tree holding the user's HOME, or itself secret, is never bound whole. Secrets
    further down a bound tree (a virtualenv's share/jupyter) are covered up instead."""
    return _contains(root, Path.home().resolve()) or _contains(root, Path.home()) or \
        root in secrets


def _is_system(path: Path) -> bool:
    return any(_contains(Path(name), path) for name in SYSTEM_DIRS)


def _contains(root: Path, path: Path) -> bool:
    return path == root or root in path.parents


def _unique(paths: Iterable[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))
