"""The frozen build works (style.md item 12): build the PyInstaller bundle and the .deb once, run them.

Modelled on qutebrowser's ``scripts/dev/build_release.py:smoke_test``: the frozen
binary must start, do real work (tiktoken, genai-prices, the store's migrations,
Qt painting offscreen) and exit 0, and any stderr line that is not on the list of
known-harmless messages fails the test — a missing hidden import or data file
often shows up only as a warning there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app import __version__

fcntl = pytest.importorskip("fcntl", reason="packaging/build.sh builds the Linux bundle and .deb")

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    # One build per session: keep the module on one xdist worker (see the `frozen` fixture).
    pytest.mark.xdist_group("frozen"),
    pytest.mark.timeout(900),
]

#: stderr lines a healthy frozen run may print (each a full-line regex).
HARMLESS_STDERR = [
    # The offscreen platform plugin cannot do these (platform-notes.md).
    r"This plugin does not support propagateSizeHints\(\)",
    r"This plugin does not support raise\(\)",
    r"This plugin does not support grabbing the keyboard",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class FrozenBuild:
    binary: Path
    deb: Path | None
    log: str


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> FrozenBuild:
    """packaging/build.sh into a temporary dist/ (fast xz for the .deb; no tarball), once per run.

    xdist workers share one build through a lock file in the run's common temporary directory:
    ``--dist loadgroup`` alone does not keep the module on one worker (pytest-xdist 3.8 sets
    ``item._nodeid``, which pytest 9.2 no longer reads), and a second build would only cost
    another minute or two of both cores.
    """
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out = shared / "frozen-build"
    with (shared / "frozen-build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        log_file = out / "build.log"
        if not log_file.exists():
            out.mkdir(exist_ok=True)
            done = subprocess.run(
                [
                    "bash",
                    str(ROOT / "packaging" / "build.sh"),
                    "--dist",
                    str(out / "dist"),
                    "--work",
                    str(out / "build"),
                    "--no-tar",
                    "--deb-level",
                    "0",
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=840,
                check=False,
            )
            log_file.write_text(f"exit {done.returncode}\n{done.stdout}{done.stderr}")
    log = log_file.read_text()
    assert log.startswith("exit 0\n"), f"packaging/build.sh failed:\n{log[-6000:]}"
    debs = sorted((out / "dist").glob("controlroom_*.deb"))
    return FrozenBuild(out / "dist" / "controlroom" / "controlroom", debs[0] if debs else None, log)


def frozen_env(tmp_path: Path) -> dict[str, str]:
    """A private home, offscreen Qt, and no help from the test process (the bundle must carry it all)."""
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700)
    env = dict(
        os.environ,
        QT_QPA_PLATFORM="offscreen",
        CONTROLROOM_HOME=str(tmp_path / "home"),
        XDG_RUNTIME_DIR=str(runtime),
    )
    for name in ("TIKTOKEN_CACHE_DIR", "CONTROLROOM_STORE", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(name, None)
    return env


def unexpected_stderr(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if line.strip() and not any(re.fullmatch(pattern, line.strip()) for pattern in HARMLESS_STDERR)
    ]


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG header, without Qt."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def run_frozen(frozen: FrozenBuild, tmp_path: Path, *args: str, timeout: float = 60) -> str:
    """Run the frozen binary to its end; it must exit 0 with nothing unexpected on stderr.  Its stdout."""
    done = subprocess.run(
        [str(frozen.binary), *args],
        env=frozen_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert not unexpected_stderr(done.stderr), done.stderr
    return done.stdout


def test_frozen_version(frozen: FrozenBuild, tmp_path: Path) -> None:
    assert run_frozen(frozen, tmp_path, "--version").strip() == f"controlroom {__version__}"


def test_frozen_ui_smoke(frozen: FrozenBuild, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    env = frozen_env(tmp_path)
    done = subprocess.run(
        [str(frozen.binary), "ui", "--smoke", "--screenshot", str(shot)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    report = f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert done.returncode == 0, report
    assert not unexpected_stderr(done.stderr), f"unexpected stderr lines:\n{report}"

    # tiktoken (plugins + bundled encodings) and genai-prices (snapshot + metadata) both worked.
    match = re.search(r"^smoke ok: .*\btokens=(\d+)\b.*\bcost_usd=(\S+)", done.stdout, re.MULTILINE)
    assert match, report
    assert int(match.group(1)) > 0
    assert float(match.group(2)) > 0
    # The encodings were unpacked from the bundle into the private cache, not found elsewhere.
    assert any((Path(env["CONTROLROOM_HOME"]) / "cache" / "tiktoken").iterdir())
    # Alembic found its scripts in the bundle and created the store.
    assert (Path(env["CONTROLROOM_HOME"]) / "data" / "controlroom.sqlite3").is_file()

    width, height = png_size(shot)
    assert width >= 640 and height >= 400, (width, height)
    assert shot.stat().st_size > 10_000, "a window with text compresses to more than this"
    from app.ui.qt import QtGui  # only to read the picture back; the frozen binary did the painting

    image = QtGui.QImage(str(shot))
    assert not image.isNull()
    colours = {image.pixel(x, y) for x in range(0, width, 7) for y in range(0, height, 7)}
    assert len(colours) > 20, "the screenshot is a flat fill, not a painted window"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_frozen_simulator_serves_a_chat_completion(frozen: FrozenBuild, tmp_path: Path) -> None:
    """aiohttp, the OpenAI wire format and a scenario YAML from resources/, all from the bundle."""
    port = free_port()
    proc = subprocess.Popen(
        [str(frozen.binary), "sim", "--listen", f"127.0.0.1:{port}", "--scenario", "instant"],
        env=frozen_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"the simulator exited early: {proc.communicate()}"
            try:
                response = httpx.post(url, json=body, headers={"Authorization": "Bearer sk-test"}, timeout=10)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the frozen simulator never started listening"
                time.sleep(0.1)
        assert response.status_code == 200, response.text
        reply = response.json()
        assert reply["choices"][0]["message"]["content"]
        assert reply["usage"]["prompt_tokens"] > 0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err}"
    assert not unexpected_stderr(err), err


def test_frozen_ingest_with_its_parser_process(frozen: FrozenBuild, tmp_path: Path) -> None:
    """``controlroom ingest --parse-process on``: the bundle forks its parser (multiprocessing, ctypes)."""
    from tests.integration.test_ingest_sigkill import make_corpus

    path = tmp_path / "events.jsonl"
    unique, bad = make_corpus(path, 3000, seed=5)
    store = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    out = run_frozen(
        frozen,
        tmp_path,
        "ingest",
        str(path),
        "--store",
        store,
        "--json",
        "--parse-process",
        "on",
        timeout=120,
    )
    counts = json.loads(out)
    assert (counts["ingested"], counts["rejected"]) == (unique, bad)


@pytest.mark.skipif(
    shutil.which("dbus-run-session") is None or shutil.which("gnome-keyring-daemon") is None,
    reason="needs dbus-run-session and gnome-keyring-daemon",
)
def test_frozen_keys_go_through_secret_service(frozen: FrozenBuild, tmp_path: Path) -> None:
    """keyring's backends are entry points: the bundle needs keyring's metadata and the Secret Service
    backend (secretstorage, jeepney, cryptography).  A private D-Bus session and keyring, as in CI."""
    env = frozen_env(tmp_path)
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg-data")
    stderr_log = tmp_path / "stderr.log"
    script = (
        "echo -n ci-pass | gnome-keyring-daemon --unlock --components=secrets >/dev/null || exit 90\n"
        'echo sk-frozen-test | "$BIN" keys set openai 2>>"$ERR" || exit 91\n'
        '"$BIN" keys list 2>>"$ERR" || exit 92\n'
        '"$BIN" keys delete openai 2>>"$ERR" || exit 93\n'
    )
    env.update(BIN=str(frozen.binary), ERR=str(stderr_log))
    done = subprocess.run(
        ["dbus-run-session", "--", "sh", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    ours = stderr_log.read_text() if stderr_log.exists() else ""
    report = f"exit {done.returncode}\n{done.stdout}\n--- ours\n{ours}\n--- session\n{done.stderr}"
    assert done.returncode == 0, report
    assert "stored the api key for openai in SecretService" in done.stdout, report
    assert re.search(r"^openai\tapi$", done.stdout, re.MULTILINE), report
    assert "deleted the api key for openai" in done.stdout, report
    assert "sk-frozen-test" not in done.stdout + ours, "a secret was echoed"
    assert not unexpected_stderr(ours), report


def dpkg_deb(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian or Ubuntu)")
def test_deb_layout(frozen: FrozenBuild) -> None:
    assert frozen.deb is not None, frozen.log[-3000:]
    info = dpkg_deb("--info", str(frozen.deb))
    assert re.search(r"^ Package: controlroom$", info, re.MULTILINE), info
    assert re.search(rf"^ Version: {re.escape(__version__)}$", info, re.MULTILINE), info
    assert re.search(r"^ Depends: .*\blibegl1\b", info, re.MULTILINE | re.DOTALL), info
    contents = dpkg_deb("--contents", str(frozen.deb))
    entries = {line.split()[5]: line for line in contents.splitlines()}
    assert "./opt/controlroom/controlroom" in entries
    assert entries["./opt/controlroom/controlroom"].startswith("-rwxr-xr-x root/root")
    assert entries["./usr/bin/controlroom"].endswith("-> /opt/controlroom/controlroom")
    assert "./usr/share/applications/controlroom.desktop" in entries
    assert "./usr/share/icons/hicolor/scalable/apps/controlroom.svg" in entries
    # GTK stays out of the bundle (platform-notes.md): Qt's gtk3 theme plugin would drag it in.
    assert not [name for name in entries if re.search(r"libgtk|libqgtk3", name)]


def installed_controlroom() -> bool:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", "controlroom"], capture_output=True, text=True, check=False
    )
    return "install ok installed" in done.stdout


@contextlib.contextmanager
def installed(deb: Path) -> Iterator[None]:
    """``dpkg -i`` the package, and ``dpkg -r`` it afterwards whatever happens."""
    try:
        done = subprocess.run(
            ["dpkg", "-i", str(deb)], capture_output=True, text=True, timeout=300, check=False
        )
        assert done.returncode == 0, f"dpkg -i failed:\n{done.stdout}\n{done.stderr}"
        yield
    finally:
        subprocess.run(
            ["dpkg", "-r", "controlroom"], capture_output=True, text=True, timeout=300, check=False
        )


@pytest.mark.skipif(shutil.which("dpkg") is None or os.geteuid() != 0, reason="needs root and dpkg")
def test_deb_installs_runs_and_removes(frozen: FrozenBuild, tmp_path: Path) -> None:
    assert frozen.deb is not None
    if installed_controlroom():
        pytest.skip("a controlroom package is already installed here; not touching it")
    with installed(frozen.deb):
        assert Path("/usr/bin/controlroom").resolve() == Path("/opt/controlroom/controlroom")
        done = subprocess.run(
            ["/usr/bin/controlroom", "--version"],
            env=frozen_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"controlroom {__version__}"
        assert not unexpected_stderr(done.stderr), done.stderr
    assert not installed_controlroom()
    assert not Path("/opt/controlroom").exists()
    assert not Path("/usr/bin/controlroom").is_symlink()
