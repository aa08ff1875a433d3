"""Tuning on a real PostgreSQL study: three workers at once, one SIGKILLed mid-trial (docs/scale-out.md).

The fixture starts a throw-away cluster (Debian's ``postgresql`` package: ``initdb`` and ``pg_ctl`` in a
temporary folder, loopback only, trust authentication) and removes it afterwards; .ci/run installs the
package. Without the binaries the test is skipped, saying so.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port, wait_until
from training.tune import FINISHED, HOLD_ENV, count_finished, open_study, with_driver

REPO = Path(__file__).resolve().parents[2]
CAP, WORKERS = 4, 3
STUDY = "fashion-torch-adam"


def postgres_bin() -> Path | None:
    """Folder of ``initdb``/``pg_ctl``: on the PATH, else Debian's newest /usr/lib/postgresql/<version>/bin."""
    if found := shutil.which("pg_ctl"):
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parents[1].name))
    return versions[-1].parent if versions else None


def as_cluster_owner(folder: Path) -> list[str]:
    """The command prefix that runs PostgreSQL's tools as a user other than root, owning ``folder``.

    ``initdb`` and ``postgres`` refuse to run as root (a server that can be tricked into running
    code must not own the machine). CI runs as root, so there they run as Debian's ``postgres`` user
    (``nobody`` if the package did not create it) through ``runuser``, which needs no password;
    ``folder`` is handed to that user. As any other user, they run as is.
    """
    if os.geteuid() != 0:
        return []
    user = next((name for name in ("postgres", "nobody") if _has_user(name)), None)
    if user is None or not shutil.which("runuser"):
        pytest.skip("running as root, with no postgres/nobody user or no runuser to run PostgreSQL as")
    entry = pwd.getpwnam(user)
    os.chown(folder, entry.pw_uid, entry.pw_gid)
    return ["runuser", "-u", user, "--"]


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL cluster on 127.0.0.1 at a free port; its URL (user ``tuner``, no password)."""
    binaries = postgres_bin()
    if binaries is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does this)")
    # Not pytest's tmp_path: its parent is private to root, and the cluster's owner must reach the folder.
    folder = Path(tempfile.mkdtemp(prefix="fashion-pg-"))
    prefix = as_cluster_owner(folder)
    port = free_port()

    def tool(*args: str) -> None:
        subprocess.run([*prefix, str(binaries / args[0]), *args[1:]], cwd=folder, check=True, timeout=120,
                       stdout=subprocess.DEVNULL)

    try:
        tool("initdb", "-D", str(folder / "data"), "-U", "tuner", "--auth=trust", "-E", "UTF8", "--no-sync")
        # -w: pg_ctl itself waits until the server accepts connections (at most -t seconds).
        tool("pg_ctl", "-D", str(folder / "data"), "-l", str(folder / "server.log"), "-w", "-t", "120",
             "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off", "start")
        yield f"postgresql://tuner@127.0.0.1:{port}/postgres"
    finally:
        if (folder / "data" / "postmaster.pid").exists():
            tool("pg_ctl", "-D", str(folder / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def tune_worker(url: str, out: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m training.tune`` on the shared study, its output in ``out/tune.log``."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "tune.log").open("ab") as sink:  # a pipe nobody reads could fill and stall the worker
        return subprocess.Popen([sys.executable, "-m", "training.tune", "--storage", url, "--optimizer", "adam",
                                 "--trials", str(CAP), "--limit", "300", "--out", str(out)],
                                cwd=REPO, stdout=sink, stderr=sink, env={**os.environ, **(env or {})})


def test_three_workers_share_a_postgres_study_and_a_killed_trial_is_retried(postgres_url, tmp_path):
    # The study and its tables exist before the workers start, so three processes never race to create them.
    open_study(postgres_url, STUDY, 0)
    hold = tmp_path / "hold"
    hold.touch()  # only worker 0 sees the gate: its first trial stops after one epoch, mid-training
    workers = [tune_worker(postgres_url, tmp_path / f"w{i}", {HOLD_ENV: str(hold)} if i == 0 else None)
               for i in range(WORKERS)]
    try:
        marker = hold.with_name("hold.trial")
        # Hang guard: worker 0 imports torch, loads the data and trains one epoch, seconds on an idle machine.
        wait_until(marker.exists, "worker 0 to report a trial mid-training", 600, interval=0.2)
        killed = int(marker.read_text())
        workers[0].send_signal(signal.SIGKILL)
        assert workers[0].wait(60) == -signal.SIGKILL
        hold.unlink()
        for i, worker in enumerate(workers[1:], 1):
            # Hang guard: the other workers finish the study, the retry included, in about a minute.
            assert worker.wait(1200) == 0, (tmp_path / f"w{i}" / "tune.log").read_text()[-2000:]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()

    trials = open_study(postgres_url, STUDY, 0).get_trials(deepcopy=False)  # afresh: nothing cached
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)), numbers
    by_number = {t.number: t for t in trials}
    lost = by_number[killed]
    assert lost.state.name == "FAIL" and lost.user_attrs["worker"].endswith(f":{workers[0].pid}")
    assert len(lost.intermediate_values) >= 1  # it was killed mid-training, after an epoch
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1, [(t.number, t.state.name, t.system_attrs) for t in trials]
    retry = retries[0]
    assert retry.state.name in FINISHED and retry.params == lost.params  # the same configuration, trained again
    assert retry.user_attrs["worker"] != lost.user_attrs["worker"]
    # Exactly the cap: no more (three workers racing) and no fewer (the killed trial counted once, by its retry).
    assert count_finished(trials) == CAP == sum(t.state.name in FINISHED for t in trials)
    # Median pruning starts only after 5 trials: with a cap of 4 every finished trial is COMPLETE.
    assert sum(t.state.name == "COMPLETE" for t in trials) == CAP


@pytest.mark.parametrize(("given", "used"), [
    ("postgresql://u@db/tuning", "postgresql+psycopg://u@db/tuning"),
    ("postgres://u@db/tuning", "postgresql+psycopg://u@db/tuning"),
    ("postgresql+psycopg2://u@db/tuning", "postgresql+psycopg2://u@db/tuning"),
    ("sqlite:///x.db", "sqlite:///x.db"),
])
def test_a_bare_postgresql_url_is_given_the_installed_driver(given, used):
    assert with_driver(given) == used
