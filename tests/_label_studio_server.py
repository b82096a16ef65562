"""A real Label Studio server for the tests, in a virtual environment of its own.

The server is an application with pinned dependencies, so it lives apart from ours: `ensure_venv()` installs
`label-studio==1.23.2` once into ~/.cache/alpeft_jax/label-studio-venv (or $ALPEFT_LABEL_STUDIO_VENV), and
`start(base)` runs it on 127.0.0.1 at a free port with SQLite, data, home folder and local-files root all under
`base`. The first start of a fresh database takes a minute or two (migrations); the migrated, still empty
database is then kept next to the venv and copied, so later starts take seconds.

By hand:
    python tests/_label_studio_server.py install          # make the venv (about 1 GB)
    python tests/_label_studio_server.py serve /tmp/ls     # a server until Ctrl-C; prints its URL and tokens
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

VERSION = "1.23.2"
USERNAME = "annotator@example.com"
PASSWORD = "alpeft-test-password"
TOKEN = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"  # the legacy API token (40 hex characters)
SECRET_KEY = "alpeft-jax-tests-only-secret"  # signs the JWTs (personal access tokens), the same at every start
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "alpeft_jax"
VENV = Path(os.environ.get("ALPEFT_LABEL_STUDIO_VENV", CACHE / "label-studio-venv"))
STAMP = VENV / ".alpeft-installed"
TEMPLATE = VENV / ".alpeft-template-db" / "label_studio.sqlite3"


def _locked(fn):
    """Run `fn` holding a lock next to the venv, so two test sessions never build it at once."""

    def wrapper(*args, **kwargs):
        VENV.parent.mkdir(parents=True, exist_ok=True)
        with open(str(VENV) + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return fn(*args, **kwargs)

    return wrapper


def executable() -> Path:
    """The venv's `label-studio` command."""
    return VENV / "bin" / "label-studio"


@_locked
def ensure_venv(log=print) -> Path:
    """Install label-studio into its own venv unless it is already there; returns the `label-studio` command."""
    if STAMP.exists() and STAMP.read_text().strip() == VERSION and executable().exists():
        return executable()
    if VENV.exists():
        shutil.rmtree(VENV)
    log(f"installing label-studio=={VERSION} into {VENV} (once; about 1 GB) ...")
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    proc = subprocess.run([*pip, f"label-studio=={VERSION}"], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"pip could not install label-studio=={VERSION} into {VENV}:\n{tail}")
    STAMP.write_text(VERSION + "\n")
    log(f"label-studio installed in {time.time() - t0:.0f}s")
    return executable()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Server:
    """A running Label Studio: its URL, the legacy token, its process and folders."""

    url: str
    token: str
    process: subprocess.Popen
    data_dir: Path
    files_root: Path
    log_path: Path
    pat: str = ""

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    def request(self, method: str, path: str, body: bytes | None = None, token: str | None = None) -> bytes:
        """One raw HTTP call with the legacy token (or `token`, sent as given)."""
        req = urllib.request.Request(self.url + path, data=body, method=method)
        req.add_header("Authorization", token or f"Token {self.token}")
        if body is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.read()

    def personal_access_token(self) -> str:
        """A new personal access token (a JWT refresh token) of the default user; made once per server."""
        import json

        if not self.pat:
            self.pat = json.loads(self.request("POST", "/api/token/", b"{}"))["token"]
        return self.pat

    def stop(self) -> None:
        """Stop the server by its process id (SIGTERM, then SIGKILL after 20 s)."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def log_tail(self, n: int = 30) -> str:
        """The last lines of the server's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _env(base: Path, data_dir: Path, files_root: Path) -> dict[str, str]:
    home = base / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
    env.pop("HOST", None)  # Label Studio reads $HOST as its public URL
    env.update(
        HOME=str(home),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_CACHE_HOME=str(home / ".cache"),
        LABEL_STUDIO_USERNAME=USERNAME,
        LABEL_STUDIO_PASSWORD=PASSWORD,
        LABEL_STUDIO_USER_TOKEN=TOKEN,
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        LATEST_VERSION_CHECK="false",
        COLLECT_ANALYTICS="false",
        SECRET_KEY=SECRET_KEY,
        DJANGO_DB="sqlite",
        LOCAL_FILES_SERVING_ENABLED="true",
        LOCAL_FILES_DOCUMENT_ROOT=str(files_root),
    )
    return env


def _launch(base: Path, files_root: Path, timeout: float) -> Server:
    data_dir = base / "data"
    for d in (data_dir, files_root, base / "home"):
        d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = base / "label_studio.log"
    cmd = [
        str(executable()),
        "start",
        "--no-browser",
        "--internal-host",
        "127.0.0.1",
        "-p",
        str(port),
        "--data-dir",
        str(data_dir),
        "--log-level",
        "WARNING",
    ]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd,
            env=_env(base, data_dir, files_root),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(base),
        )
    server = Server(f"http://127.0.0.1:{port}", TOKEN, proc, data_dir, files_root, log_path)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Label Studio exited with code {proc.returncode}:\n{server.log_tail()}")
        try:
            server.request("GET", "/api/current-user/whoami")
            return server
        except (urllib.error.URLError, OSError):
            time.sleep(1.0)
    server.stop()
    raise RuntimeError(f"Label Studio did not answer within {timeout:.0f}s:\n{server.log_tail()}")


@_locked
def _template(timeout: float) -> Path:
    """A migrated, empty database with the default user and token (made by one start, then reused)."""
    if not TEMPLATE.exists():
        scratch = TEMPLATE.parent.with_name(".alpeft-template-build")
        shutil.rmtree(scratch, ignore_errors=True)
        server = _launch(scratch, scratch / "files", timeout)
        server.stop()
        TEMPLATE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(scratch / "data" / "label_studio.sqlite3", str(TEMPLATE) + ".tmp")
        os.replace(str(TEMPLATE) + ".tmp", TEMPLATE)
        shutil.rmtree(scratch, ignore_errors=True)
    return TEMPLATE


def start(base: Path, files_root: Path | None = None, timeout: float = 600.0) -> Server:
    """Install if needed and start a server whose state lives under `base`; stop it with `.stop()`."""
    ensure_venv()
    base = Path(base)
    (base / "data").mkdir(parents=True, exist_ok=True)
    shutil.copy2(_template(timeout), base / "data" / "label_studio.sqlite3")
    return _launch(base, Path(files_root) if files_root else base / "files", timeout)


def main(argv: list[str]) -> int:
    """`install`, or `serve DIR`: a server until Ctrl-C."""
    if argv[:1] == ["install"]:  # the server's venv and its empty database, made once and cached
        print(ensure_venv())
        print(_template(600.0))
        return 0
    if argv[:1] == ["serve"] and len(argv) == 2:
        server = start(Path(argv[1]).absolute())
        print(f"Label Studio {VERSION} at {server.url} (pid {server.pid}); log in as {USERNAME} / {PASSWORD}")
        print(f"legacy token:          {server.token}")
        print(f"personal access token: {server.personal_access_token()}")
        print(f"local files root:      {server.files_root}")
        try:
            server.process.wait()
        except KeyboardInterrupt:
            server.stop()
        return 0
    print("usage: python tests/_label_studio_server.py install | serve DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
