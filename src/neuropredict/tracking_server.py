"""MLflow servers on 127.0.0.1: the UI on the project's own store (`neuropredict up`), and the
team's tracking server (`neuropredict up --tracking server`): PostgreSQL (Debian's package) and
`mlflow server` on it, with served artifacts and MLflow's basic-auth app.

Secrets (the database password, the admin password, Flask's secret key) are generated once and
kept in files only their owner can read, under .neuropredict/tracking-server/secrets/. They reach
the processes through files and environment variables, never through a command line, a URI or a
log: the MLflow server finds the database password in a libpq password file (PGPASSFILE).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from neuropredict import procs
from neuropredict.errors import ServiceError
from neuropredict.files import read_json, write_json
from neuropredict.procs import Service
from neuropredict.settings import contracts, environment
from neuropredict.settings.paths import paths

DB_USER = "mlflow"
DATABASE = "mlflow"
ADMIN_USER = "admin"
SERVER_USER = "postgres"  # PostgreSQL refuses to run as root: as root, it runs as this user
POSTGRES_START_TIMEOUT_S = 30.0
SERVER_START_TIMEOUT_S = 180.0  # the first start migrates two empty databases: ~20 s here, alone


def postgres_bin() -> Path:
    """PostgreSQL's server programs: $NEUROPREDICT_PG_BIN, else Debian's newest, else the PATH."""
    candidates = [os.environ.get("NEUROPREDICT_PG_BIN", "")]
    candidates += [str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                                          key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
                                          reverse=True)]
    found = shutil.which("initdb")
    candidates += [str(Path(found).parent)] if found else []
    for folder in filter(None, candidates):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "postgres").is_file():
            return Path(folder)
    raise ServiceError("PostgreSQL is not installed: `apt-get install postgresql` (Debian, Ubuntu), or set "
                       "NEUROPREDICT_PG_BIN to the folder holding initdb and postgres")


@dataclass(frozen=True)
class Layout:
    """Where the tracking server keeps its files; `data_dir` is the PostgreSQL cluster."""

    folder: Path
    data_dir: Path

    @classmethod
    def for_project(cls) -> Layout:
        return cls.at(paths().tracking_server_dir)

    @classmethod
    def at(cls, folder: Path) -> Layout:
        recorded = read_json(folder / "server.json", default={}).get("data_dir")
        return cls(folder, Path(recorded) if recorded else _data_dir(folder))

    @property
    def secrets(self) -> Path:
        return self.folder / "secrets"

    @property
    def admin_password_file(self) -> Path:
        return self.secrets / "admin-password"

    @property
    def pgpass(self) -> Path:
        return self.secrets / "pgpass"

    @property
    def artifacts(self) -> Path:
        return self.folder / "artifacts"

    @property
    def auth_config(self) -> Path:
        return self.folder / "basic_auth.ini"

    def secret(self, name: str) -> str:
        """A secret of this server, generated (and kept, 0600) the first time it is asked for."""
        path = self.secrets / name
        if not path.exists():
            self.secrets.mkdir(parents=True, exist_ok=True, mode=0o700)
            _write_private(path, secrets.token_urlsafe(24))
        return path.read_text().strip()


def _write_private(path: Path, text: str) -> None:
    """A new file only its owner can read, created with that mode (never readable for a moment)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _data_dir(folder: Path) -> Path:
    """In the project, unless PostgreSQL must run as another user who cannot reach it (a project
    under a private home or temp folder, run as root): then in that user's home."""
    inside = folder / "postgres"
    user = _server_user()
    if user is None or _reachable(inside.parent, user):
        return inside
    import hashlib

    tag = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    return Path(user.pw_dir) / "neuropredict" / tag


def _server_user() -> pwd.struct_passwd | None:
    """The user PostgreSQL runs as: None for ourselves, SERVER_USER when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise ServiceError(f"PostgreSQL refuses to run as root and there is no '{SERVER_USER}' user: install "
                           f"Debian's postgresql package (it creates one), or run as an ordinary user") from None


def _reachable(folder: Path, user: pwd.struct_passwd) -> bool:
    """Can `user` walk into every existing parent of `folder` (the execute bit that applies to it)?"""
    for part in [*reversed(folder.resolve().parents), folder.resolve()]:
        if not part.exists():
            break
        st = part.stat()
        bit = 0o100 if st.st_uid == user.pw_uid else 0o010 if st.st_gid == user.pw_gid else 0o001
        if not st.st_mode & bit:
            return False
    return True


# ---- PostgreSQL ----


def _as_server_user() -> dict:
    """Popen arguments that run a program as the PostgreSQL user (nothing when that is us)."""
    user = _server_user()
    return {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _chown(path: Path) -> None:
    user = _server_user()
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)


def init_cluster(layout: Layout) -> None:
    """initdb once: password authentication (scram-sha-256) for every connection, user DB_USER."""
    if (layout.data_dir / "PG_VERSION").exists():
        return
    password = layout.secret("db-password")
    layout.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _chown(layout.data_dir)
    pwfile = layout.data_dir.parent / f".{layout.data_dir.name}.pw"
    pwfile.unlink(missing_ok=True)  # left by an initdb that was killed
    _write_private(pwfile, password)
    _chown(pwfile)
    try:
        proc = subprocess.run([str(postgres_bin() / "initdb"), "-D", str(layout.data_dir), "-U", DB_USER,
                               f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--no-instructions"],
                              capture_output=True, text=True, **_as_server_user())
    finally:
        pwfile.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise ServiceError(f"initdb failed in {layout.data_dir}: {(proc.stderr or proc.stdout).strip()[-300:]}")


def _write_pgpass(layout: Layout) -> None:
    """libpq's password file: how the MLflow server (and psycopg here) log in without a password in a URI."""
    if not layout.pgpass.exists():
        _write_private(layout.pgpass, f"127.0.0.1:*:*:{DB_USER}:{layout.secret('db-password')}\n")


def database_uri(port: int) -> str:
    """A SQLAlchemy URI without a password (libpq reads it from PGPASSFILE)."""
    return f"postgresql://{DB_USER}@127.0.0.1:{port}/{DATABASE}"


def start_postgres(layout: Layout, port: int) -> Service:
    if procs.port_open("127.0.0.1", port):
        raise ServiceError(f"port {port} is already in use (another PostgreSQL?): stop it, or set "
                           f"NEUROPREDICT_PG_PORT to a free port")
    init_cluster(layout)
    _write_pgpass(layout)
    log_path = layout.folder / "postgres.log"
    cmd = [str(postgres_bin() / "postgres"), "-D", str(layout.data_dir), "-h", "127.0.0.1", "-p", str(port),
           "-k", str(layout.data_dir)]
    proc = procs.spawn(cmd, log_path, **_as_server_user())
    procs.wait_ready(proc, lambda: _databases_ready(layout, port), POSTGRES_START_TIMEOUT_S,
                     f"PostgreSQL on 127.0.0.1:{port}", log_path)
    # SIGINT: PostgreSQL's fast shutdown (SIGTERM waits for its clients)
    return procs.service("postgres", proc, f"postgresql://127.0.0.1:{port}", log_path, signal.SIGINT)


def _databases_ready(layout: Layout, port: int) -> bool:
    """Connects (as MLflow will: password from the file) and creates the database the first time."""
    import psycopg

    try:
        with psycopg.connect(host="127.0.0.1", port=port, user=DB_USER, dbname="postgres",
                             passfile=str(layout.pgpass), autocommit=True, connect_timeout=2) as conn:
            present = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
            if DATABASE not in present:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')
        return True
    except psycopg.OperationalError:
        return False


# ---- the MLflow server ----


AUTH_CACHE_TTL_S = 60  # bench/tracking_server.py: what caching the password check is worth


def server_command(layout: Layout, pg_port: int, port: int, auth: bool,
                   auth_cache_ttl_s: int = AUTH_CACHE_TTL_S) -> tuple[list[str], dict[str, str]]:
    """`mlflow server` on the PostgreSQL store with served artifacts; its secrets in its environment."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", database_uri(pg_port),
           "--artifacts-destination", str(layout.artifacts), "--serve-artifacts",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    env = {**os.environ, "PGPASSFILE": str(layout.pgpass), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(key, None)  # a client's settings, not the server's
    if auth:
        layout.auth_config.write_text(
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = sqlite:///{layout.folder / 'basic_auth.db'}\n"  # as in compose (a volume there)
            f"admin_username = {ADMIN_USER}\n"
            # each request's password check costs ~0.12 s of CPU (scrypt): cached, a worker's alias
            # polls and metrics stop competing with it; a changed password takes that long to apply
            f"auth_cache_ttl_seconds = {auth_cache_ttl_s}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        cmd += ["--app-name", "basic-auth"]
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(layout.auth_config),
                   MLFLOW_AUTH_ADMIN_PASSWORD=layout.secret("admin-password"),
                   MLFLOW_FLASK_SERVER_SECRET_KEY=layout.secret("flask-secret-key"))
    return cmd, env


def start_server(layout: Layout, pg_port: int, port: int, auth: bool,
                 auth_cache_ttl_s: int = AUTH_CACHE_TTL_S) -> Service:
    procs.require_free(port, "NEUROPREDICT_UI_PORT")
    layout.artifacts.mkdir(parents=True, exist_ok=True)
    cmd, env = server_command(layout, pg_port, port, auth, auth_cache_ttl_s)
    return _start_mlflow("mlflow-server", cmd, env, port, layout.folder / "mlflow-server.log", SERVER_START_TIMEOUT_S,
                         cwd=layout.folder)


def start(running: dict[str, Service], auth: bool) -> list[Service]:
    """PostgreSQL and the MLflow server, each unless already running; remembers the layout and auth."""
    layout = Layout.for_project()
    layout.folder.mkdir(parents=True, exist_ok=True)
    recorded = read_json(layout.folder / "server.json", default={})
    if "mlflow-server" in running and recorded.get("auth", auth) != auth:
        raise ServiceError(f"the tracking server runs {'with' if recorded['auth'] else 'without'} basic-auth: "
                           f"`neuropredict down` first to change that")
    started = []
    pg_port = int(running["postgres"].url.rpartition(":")[2]) if "postgres" in running else environment.postgres_port()
    if "postgres" not in running:
        started.append(start_postgres(layout, pg_port))
    if "mlflow-server" not in running:
        started.append(start_server(layout, pg_port, environment.mlflow_ui_port(), auth))
    if auth:
        layout.secret("worker-password")  # generated the first time
        grant_worker((running.get("mlflow-server") or started[-1]).url, layout.secrets)
    write_json(layout.folder / "server.json", {"data_dir": str(layout.data_dir), "auth": auth,
                                               "postgres_port": pg_port})
    return started


# ---- the workers' own MLflow user ----


WORKER_USER = "worker"


def grant_worker(url: str, secrets_dir: Path) -> None:
    """The workers' MLflow user (password: the `worker-password` secret), with what they need and no
    more: read the registered model (every user reads: default_permission READ) and EDIT the serving
    experiment, where they log their runs. It cannot move an alias, register a model or write into
    the training experiment. Idempotent: `up` runs it on every start, compose's mlflow-init once."""
    api = _AuthApi(url, ADMIN_USER, (secrets_dir / "admin-password").read_text().strip())
    if api.call("GET", "2.0/mlflow/users/get", username=WORKER_USER) is None:
        api.call("POST", "2.0/mlflow/users/create", username=WORKER_USER,
                 password=(secrets_dir / "worker-password").read_text().strip())
    found = api.call("GET", "2.0/mlflow/experiments/get-by-name", experiment_name=contracts.SERVING_EXPERIMENT_NAME)
    experiment_id = found["experiment"]["experiment_id"] if found else api.call(
        "POST", "2.0/mlflow/experiments/create", name=contracts.SERVING_EXPERIMENT_NAME)["experiment_id"]
    api.call("POST", "3.0/mlflow/users/permissions/grant", username=WORKER_USER, resource_type="experiment",
             resource_id=experiment_id, permission="EDIT")


class _AuthApi:
    """MLflow's REST API as the admin (urllib: the worker image has no MLflow server code)."""

    def __init__(self, url: str, user: str, password: str):
        import base64

        self.url = url
        self.headers = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode(),
                        "Content-Type": "application/json"}

    def call(self, method: str, path: str, **fields) -> dict | None:
        """The answer's JSON; None when the thing asked for does not exist (404), {} when what it
        creates exists already."""
        import json
        import urllib.error
        import urllib.parse
        import urllib.request

        target = f"{self.url}/api/{path}"
        body = None
        if method == "GET":
            target += "?" + urllib.parse.urlencode(fields)
        else:
            body = json.dumps(fields).encode()
        request = urllib.request.Request(target, data=body, headers=self.headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            if exc.code == 404:
                return None
            if "RESOURCE_ALREADY_EXISTS" in detail:  # granted (or created) by an earlier `up`
                return {}
            detail = detail[:200]
            raise ServiceError(f"the MLflow server refused {method} {path} ({exc.code}: {detail})") from None


def credentials() -> tuple[str, Path] | None:
    """The user name and the password's file for the running server's basic-auth (None: no auth)."""
    layout = Layout.for_project()
    if read_json(layout.folder / "server.json", default={}).get("auth"):
        return ADMIN_USER, layout.admin_password_file
    return None


def compose_variables() -> dict[str, str]:
    """The values serving/compose.yaml requires, as this server has them (the processes' twin of a .env)."""
    layout = Layout.for_project()
    variables = {"POSTGRES_PASSWORD": layout.secret("db-password")}
    if credentials():
        variables.update(MLFLOW_ADMIN_PASSWORD=layout.secret("admin-password"),
                         MLFLOW_WORKER_PASSWORD=layout.secret("worker-password"),
                         MLFLOW_FLASK_SECRET_KEY=layout.secret("flask-secret-key"))
    return variables


def secrets_dir() -> Path:
    """Where this server's secrets are, as files named as compose's secrets (/run/secrets/NAME there)."""
    return Layout.for_project().secrets


# ---- the MLflow UI on the project's own store ----


def start_mlflow_ui(port: int, log_path: Path, timeout_s: float = 60.0) -> Service:
    """`mlflow server` on 127.0.0.1 for this project's store (`neuropredict up`)."""
    procs.require_free(port, "NEUROPREDICT_UI_PORT")
    cmd, env = mlflow_ui_command(port)
    return _start_mlflow("mlflow-ui", cmd, env, port, log_path, timeout_s)


def mlflow_ui_command(port: int) -> tuple[list[str], dict[str, str]]:
    """`mlflow server` for this project's store on 127.0.0.1 (job execution off: 2 processes, not 10)."""
    uri = environment.tracking_uri()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    if uri.startswith("sqlite"):
        cmd += ["--default-artifact-root", environment.artifact_root()]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return cmd, env


def _start_mlflow(name: str, cmd: list[str], env: dict[str, str], port: int, log_path: Path, timeout_s: float,
                  **popen) -> Service:
    """An `mlflow server`, ready when it answers /health."""
    url = f"http://127.0.0.1:{port}"
    proc = procs.spawn(cmd, log_path, env=env, **popen)
    what = "the MLflow server" if name == "mlflow-server" else "the MLflow UI"
    procs.wait_ready(proc, lambda: procs.http_status(f"{url}/health") == 200, timeout_s, what, log_path, every_s=0.25)
    return procs.service(name, proc, url, log_path)


def main(argv: list[str]) -> int:
    """`python -m neuropredict.tracking_server grant-worker URL SECRETS_DIR` (compose's mlflow-init)."""
    if len(argv) != 3 or argv[0] != "grant-worker":
        print("usage: python -m neuropredict.tracking_server grant-worker URL SECRETS_DIR", file=sys.stderr)
        return 2
    from neuropredict import retry

    url, folder = argv[1], Path(argv[2])
    retry.retry(lambda: grant_worker(url, folder), "MLflow server not ready", retry.Backoff(2.0, 10.0), attempts=15,
                retry_on=(OSError,))  # not listening yet; a refusal (ServiceError) is final
    print(f"MLflow user {WORKER_USER}: EDIT on {contracts.SERVING_EXPERIMENT_NAME}, READ elsewhere")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
