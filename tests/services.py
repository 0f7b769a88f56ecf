"""Start real services (Xvfb, PulseAudio, MariaDB, Firestore emulator) on loopback for tests.

Every service runs in its own temporary directory, listens on an ephemeral port or a private
socket, and is torn down by ``stop()`` (terminate, wait, then kill): no process is leaked.
All classes are context managers; ``start()`` raises ``ServiceError`` with the tail of the
service's log when it does not come up.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import NoReturn, Self

ROOT = Path(__file__).resolve().parent.parent
EMULATOR_DIR = ROOT / ".cache" / "firestore-emulator"
EMULATOR_MODULE = EMULATOR_DIR / "node_modules" / "@firestore-emulator" / "server"


class ServiceError(RuntimeError):
    """A service failed to start or answer."""


def require(what: str, reason: str) -> NoReturn:
    """Fail (CI=true) or skip the current test because ``what`` is missing."""
    import pytest

    message = f"{what} is missing: {reason} (run scripts/provision)"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port that was free a moment ago.

    The socket is closed before the caller binds the port, so another process could grab it
    in between (a tiny race); callers that can retry on a bind error should do so.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    """Return True if a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """Terminate a process started in its own session, then kill its group after ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


class Service:
    """Base: a temp dir, one child process with its log, and a clean ``stop()``."""

    name = "service"

    def __init__(self, startup_timeout: float = 30.0) -> None:
        self.startup_timeout = startup_timeout
        self.tmp = Path(tempfile.mkdtemp(prefix=f"overdrive-{self.name}-"))
        self.log_path = self.tmp / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0

    def _spawn(
        self,
        argv: list[str],
        env: dict[str, str] | None = None,
        pass_fds: tuple[int, ...] = (),
        stdout: int | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a new session with stderr (and stdout unless given) to the log."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log if stdout is None else stdout,
                stderr=log,
                env={**os.environ, **(env or {})},
                pass_fds=pass_fds,
                start_new_session=True,
            )
        return self.proc

    def log_tail(self, lines: int = 30) -> str:
        """Return the last lines of the service log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, message: str) -> NoReturn:
        """Stop the service and raise ``ServiceError`` with its log tail."""
        tail = self.log_tail()
        self.stop()
        raise ServiceError(f"{self.name}: {message}\n--- log ---\n{tail}")

    def wait_for(self, ready: Callable[[], bool], what: str) -> None:
        """Poll the callable ``ready`` until true, failing on timeout or process exit."""
        deadline = time.monotonic() + self.startup_timeout
        while not ready():
            if self.proc is not None and self.proc.poll() is not None:
                self.fail(f"exited with {self.proc.returncode} while waiting for {what}")
            if time.monotonic() > deadline:
                self.fail(f"timed out after {self.startup_timeout}s waiting for {what}")
            time.sleep(0.05)

    def start(self) -> Self:
        """Start the service and wait until it is ready."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the process and remove the temp dir."""
        stop_process(self.proc)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def env(self) -> dict[str, str]:
        """Environment variables a client needs to reach the service."""
        return {}

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Xvfb(Service):
    """A virtual X display picked by Xvfb itself (``-displayfd``)."""

    name = "xvfb"
    binary = "Xvfb"

    def __init__(self, screen: str = "1920x1080x24", startup_timeout: float = 30.0) -> None:
        super().__init__(startup_timeout)
        self.screen = screen
        self.display = ""

    def start(self) -> Self:
        """Start Xvfb and read its display number from the -displayfd pipe."""
        began = time.monotonic()
        read_fd, write_fd = os.pipe()
        try:
            argv = [self.binary, "-displayfd", str(write_fd), "-screen", "0", self.screen]
            self._spawn([*argv, "-noreset", "-nolisten", "tcp"], pass_fds=(write_fd,))
            os.close(write_fd)
            write_fd = -1
            number = self._read_display(read_fd)
        finally:
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)
        self.display = f":{number}"
        self.startup_seconds = time.monotonic() - began
        return self

    def _read_display(self, fd: int) -> str:
        """Read the display number Xvfb writes once it accepts connections."""
        data = b""
        deadline = time.monotonic() + self.startup_timeout
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.fail("timed out waiting for -displayfd")
            ready, _, _ = select.select([fd], [], [], remaining)
            chunk = os.read(fd, 64) if ready else b""
            if ready and not chunk:
                self.fail("closed -displayfd without a display number")
            data += chunk
        return data.decode().strip()

    def env(self) -> dict[str, str]:
        """DISPLAY for clients."""
        return {"DISPLAY": self.display}


class PulseAudio(Service):
    """A private PulseAudio daemon with a null sink ``virt`` (default sink; source virt.monitor)."""

    name = "pulse"
    binary = "pulseaudio"

    def __init__(self, sink: str = "virt", startup_timeout: float = 30.0) -> None:
        super().__init__(startup_timeout)
        self.sink = sink
        self.runtime = self.tmp / "runtime"
        self.socket = self.runtime / "native"

    def env(self) -> dict[str, str]:
        """Variables that route libpulse clients (and ALSA's pulse plugin) to this daemon only."""
        return {
            "PULSE_SERVER": f"unix:{self.socket}",
            "PULSE_RUNTIME_PATH": str(self.runtime),
            "XDG_RUNTIME_DIR": str(self.tmp),
            "PULSE_STATE_PATH": str(self.tmp / "state"),
            "PULSE_COOKIE": str(self.tmp / "cookie"),
        }

    def start(self) -> Self:
        """Start the daemon, load the native socket and the null sink, set defaults."""
        began = time.monotonic()
        self.runtime.mkdir(mode=0o700)
        argv = [
            self.binary,
            "--daemonize=no",
            "--exit-idle-time=-1",
            "--system=false",
            "--use-pid-file=no",
            "--realtime=no",
            "--high-priority=no",
            "--disallow-exit",
            "--log-target=stderr",
            "-n",
            "-L",
            f"module-native-protocol-unix socket={self.socket} auth-anonymous=1",
        ]
        self._spawn(argv, env={**self.env(), "HOME": str(self.tmp)})
        self.wait_for(lambda: self.socket.exists() and self._pactl_ok("info"), "native socket")
        self.add_null_sink(self.sink)
        self.pactl("set-default-sink", self.sink)
        self.pactl("set-default-source", f"{self.sink}.monitor")
        self.startup_seconds = time.monotonic() - began
        return self

    def _pactl_ok(self, *args: str) -> bool:
        """Run pactl and report success."""
        run = subprocess.run(
            ["pactl", *args],
            check=False,
            env={**os.environ, **self.env()},
            capture_output=True,
            timeout=10,
        )
        return run.returncode == 0

    def pactl(self, *args: str) -> str:
        """Run pactl against this daemon and return its stdout."""
        run = subprocess.run(
            ["pactl", *args],
            check=False,
            env={**os.environ, **self.env()},
            capture_output=True,
            text=True,
            timeout=10,
        )
        if run.returncode != 0:
            raise ServiceError(f"pactl {' '.join(args)}: {run.stderr.strip()}")
        return run.stdout

    def add_null_sink(self, name: str) -> int:
        """Load another null sink (its monitor source is ``NAME.monitor``); return the module id."""
        out = self.pactl("load-module", "module-null-sink", f"sink_name={name}")
        return int(out.strip())


class MariaDB(Service):
    """A throwaway MariaDB server with database ``overdrive_test`` and user ``overdrive``."""

    name = "mariadb"
    binary = "mariadbd"
    install_db = "mariadb-install-db"

    def __init__(self, database: str = "overdrive_test", startup_timeout: float = 60.0) -> None:
        super().__init__(startup_timeout)
        self.host = "127.0.0.1"
        self.port = 0
        self.user = "overdrive"
        self.password = secrets.token_hex(12)
        self.database = database
        self.datadir = self.tmp / "data"
        self.socket = self.tmp / "mysqld.sock"

    @property
    def url(self) -> str:
        """``mysql://user:password@host:port/database``."""
        return f"mysql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    def env(self) -> dict[str, str]:
        """The URL as OVERDRIVE_TEST_MYSQL_URL."""
        return {"OVERDRIVE_TEST_MYSQL_URL": self.url}

    def _user_args(self) -> list[str]:
        """``--user=root`` when running as root (mariadbd refuses root otherwise)."""
        return ["--user=root"] if os.geteuid() == 0 else []

    def start(self, attempts: int = 3) -> Self:
        """Initialise the datadir, start mariadbd on a free port, create the db and user."""
        began = time.monotonic()
        init = subprocess.run(
            [
                self.install_db,
                "--no-defaults",
                f"--datadir={self.datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                *self._user_args(),
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if init.returncode != 0:
            self.fail(f"mariadb-install-db failed:\n{init.stdout}\n{init.stderr}")
        for _ in range(attempts):
            self.port = free_port(self.host)
            if self._serve():
                break
        else:
            self.fail(f"no free port after {attempts} attempts")
        self._create_user()
        self.startup_seconds = time.monotonic() - began
        return self

    def _serve(self) -> bool:
        """Start mariadbd on ``self.port``; False if the port was taken meanwhile (retry)."""
        proc = self._spawn(self._server_argv())
        deadline = time.monotonic() + self.startup_timeout
        while not (self.socket.exists() and port_open(self.host, self.port)):
            if proc.poll() is not None:
                if "Address already in use" in self.log_tail():
                    return False
                self.fail(f"mariadbd exited with {proc.returncode}")
            if time.monotonic() > deadline:
                self.fail(f"timed out after {self.startup_timeout}s waiting for the port")
            time.sleep(0.05)
        return True

    def _server_argv(self) -> list[str]:
        """The mariadbd command line."""
        return [
            self.binary,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            f"--pid-file={self.tmp / 'mysqld.pid'}",
            f"--log-error={self.log_path}",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M",
            "--skip-log-bin",
            *self._user_args(),
        ]

    def _create_user(self) -> None:
        """Create the database and a password user through root's unix socket."""
        import pymysql

        conn = pymysql.connect(unix_socket=str(self.socket), user="root")
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{self.database}`")
                for host in ("127.0.0.1", "localhost"):
                    cur.execute(f"CREATE USER '{self.user}'@'{host}' IDENTIFIED BY %s", (self.password,))
                    cur.execute(f"GRANT ALL ON `{self.database}`.* TO '{self.user}'@'{host}'")
        finally:
            conn.close()


class FirestoreEmulator(Service):
    """The npm ``@firestore-emulator/server`` gRPC emulator on 127.0.0.1, port chosen by itself."""

    name = "firestore"
    binary = "node"
    # FirestoreServer.start(port) binds 0.0.0.0; bind its (TS-private) grpc server ourselves
    # to 127.0.0.1:0 and print the port the kernel chose, so there is no free-port race.
    script = """
const { FirestoreServer } = require(process.argv[1]);
const { ServerCredentials } = require(require.resolve("@grpc/grpc-js", { paths: [process.argv[1]] }));
const fs = new FirestoreServer();
fs.server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (err, port) => {
  if (err) { console.error(err); process.exit(1); }
  console.log(`PORT ${port}`);
});
const bye = () => { fs.stop(); process.exit(0); };
process.on("SIGTERM", bye);
process.on("SIGINT", bye);
"""

    def __init__(self, project_id: str = "overdrive-test", startup_timeout: float = 30.0) -> None:
        super().__init__(startup_timeout)
        self.project_id = project_id
        self.host = "127.0.0.1"
        self.port = 0

    @property
    def host_port(self) -> str:
        """Value for FIRESTORE_EMULATOR_HOST."""
        return f"{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """FIRESTORE_EMULATOR_HOST and the project id variables google clients read."""
        return {
            "FIRESTORE_EMULATOR_HOST": self.host_port,
            "GOOGLE_CLOUD_PROJECT": self.project_id,
            "GCLOUD_PROJECT": self.project_id,
        }

    def start(self) -> Self:
        """Start node with the emulator and read the bound port from its stdout."""
        began = time.monotonic()
        proc = self._spawn([self.binary, "-e", self.script, str(EMULATOR_MODULE)], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        line = b""
        while not line.endswith(b"\n"):
            ready, _, _ = select.select([proc.stdout], [], [], max(deadline - time.monotonic(), 0))
            chunk = os.read(proc.stdout.fileno(), 64) if ready else b""
            if not chunk:
                self.fail("no port announced (timeout or exit)")
            line += chunk
        self.port = int(line.decode().split()[1])
        self.wait_for(lambda: port_open(self.host, self.port), "port")
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Stop node and close its stdout pipe."""
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        super().stop()


def emulator_credential() -> object:
    """A firebase-admin credential for the emulator (firebase-admin demands one, even there).

    ``firebase_admin.initialize_app(emulator_credential(), {"projectId": ...})``: without it,
    ``firestore.client()`` looks for Application Default Credentials and raises.
    """
    from firebase_admin import credentials
    from google.auth.credentials import AnonymousCredentials

    class _Anonymous(credentials.Base):  # type: ignore[misc]
        """Anonymous google-auth credentials; the emulator ignores authentication."""

        def get_credential(self) -> AnonymousCredentials:
            """Return anonymous credentials."""
            return AnonymousCredentials()  # type: ignore[no-untyped-call]

    return _Anonymous()
