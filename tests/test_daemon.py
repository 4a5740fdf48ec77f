"""The daemon as a real subprocess: single-flight resolve, shim, mirror, watcher, signals, errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import site
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import Cli
from tests.support.daemons import Daemon, free_port, http, run_job, stop_process, wait_for
from tests.support.env import BASE_ENV, REPO
from tests.support.origin import FakeOrigin

TFHUB = "https://tfhub.dev/google/mymul/1"


@pytest.fixture
def daemons(cli: Cli) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.stop(signal.SIGKILL)


def start(daemons: list[Daemon], cli: Cli, home: Path, *args: str, env: dict[str, str] | None = None,
          listen: bool = False) -> Daemon:
    d = Daemon(home, {**cli.env, **(env or {})}, *args, listen=f"127.0.0.1:{free_port()}" if listen else None)
    daemons.append(d)
    return d.wait_ready()


def test_herd_of_clients_causes_one_download(cli: Cli, origin: FakeOrigin, home: Path,
                                             daemons: list[Daemon]) -> None:
    d = start(daemons, cli, home)
    release = origin.hold("gcs", after_bytes=100)
    env = {"CACHEMGR_SOCKET": str(d.sock), "TFHUB_CACHE_DIR": str(home / "view")}
    raw = ("import sys, json; from cachemgr.client.daemon_client import call; "
           "print(json.dumps(call(sys.argv[1], 'POST', '/v1/resolve', {'handle': sys.argv[2]})))")
    clients = [subprocess.Popen([sys.executable, "-c", raw, str(d.sock), TFHUB + ("/" if i % 2 else "")],
                                env={**BASE_ENV, **env}, stdout=subprocess.PIPE, text=True, cwd=REPO)
               for i in range(8)]
    hub_clients = [subprocess.Popen([sys.executable, str(REPO / "tests" / "shim_job.py"), "resolve", TFHUB],
                                    env={**BASE_ENV, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, cwd=REPO) for _ in range(2)]
    assert wait_for(lambda: origin.started("gcs") == 1, 60)
    # Let every client's request reach the daemon while the one download is held.
    # Release the one download only when all ten clients (8 raw, 2 TensorFlow) are waiting on it.
    assert wait_for(lambda: d.call("GET", "/v1/status")[1]["misses"] == 10, 180), d.call("GET", "/v1/status")
    assert d.call("GET", "/v1/status")[1]["inflight"] == [TFHUB]
    release.set()
    views = set()
    for c in clients:
        out, _ = c.communicate(timeout=120)
        status, doc = json.loads(out)
        assert status == 200, doc
        views.add(doc["view"])
    for c in hub_clients:
        out, err = c.communicate(timeout=120)
        assert c.returncode == 0, err[-2000:]
        line = next(x for x in out.splitlines() if x.startswith("RESULT "))
        assert json.loads(line.removeprefix("RESULT "))["paths"][0].startswith(str(home / "view"))
    assert origin.started("gcs") == 1 and origin.requests_of("tfhub")[0].status == 302
    assert len(origin.requests_of("tfhub")) == 1
    assert len(views) == 2  # two aliases (with and without slash), one model
    status = d.call("GET", "/v1/status")[1]
    assert status["fetches"] == 1 and status["hits"] + status["misses"] == 10


def test_shim_hit_miss_and_keras(cli: Cli, origin: FakeOrigin, home: Path, daemons: list[Daemon]) -> None:
    d = start(daemons, cli, home)
    env = {"CACHEMGR_SOCKET": str(d.sock), "TFHUB_CACHE_DIR": str(home / "view")}
    out, _ = run_job("load", TFHUB, env=env)  # a miss: the daemon fetches
    assert out["call"] == [6.0] and out["losses"] and out["model_layers"] == 1
    assert out["path"] == str(home / "view" / __import__("hashlib").sha1(TFHUB.encode()).hexdigest())
    assert origin.completed("gcs") == 1
    uses = os.listdir(home / "uses")
    assert uses, "the shim recorded no use"
    stop_process(d.proc.pid)  # a hit must not need the daemon at all
    try:
        out, _ = run_job("load", TFHUB, env=env)
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    assert out["call"] == [6.0]
    assert origin.completed("gcs") == 1


def test_shim_offline_miss_names_handle_and_fix(cli: Cli, home: Path, daemons: list[Daemon]) -> None:
    d = start(daemons, cli, home, "--offline")
    env = {"CACHEMGR_SOCKET": str(d.sock), "TFHUB_CACHE_DIR": str(home / "view")}
    out, _ = run_job("offline_miss", TFHUB, env=env)
    assert out["error"] and "CachemgrResolveError" in out["error"]
    assert TFHUB in out["error"] and "cachemgr import" in out["error"] and "offline" in out["error"]
    status, doc = d.call("POST", "/v1/resolve", {"handle": TFHUB})
    assert status == 404 and doc["error"]["type"] == "offline_miss"


def test_shim_falls_back_when_daemon_unreachable(origin: FakeOrigin, tmp_path: Path) -> None:
    url = origin.hosting_url("google", "mymul", 1)
    env = {"CACHEMGR_SOCKET": str(tmp_path / "nobody.sock"), "TFHUB_CACHE_DIR": str(tmp_path / "hubcache")}
    out, _ = run_job("fallback", url, url + "/", env=env)
    assert out["call"] == [6.0]
    assert out["path"].startswith(str(tmp_path / "hubcache"))
    assert len(out["warnings"]) == 1 and "daemon unreachable" in out["warnings"][0]
    assert origin.completed("hosting") == 2  # hub's own downloads (two aliases, no shared cache)


def test_mirror_serves_plain_hub_and_feeds_a_second_daemon(cli: Cli, origin: FakeOrigin, tmp_path: Path,
                                                           daemons: list[Daemon]) -> None:
    a = start(daemons, cli, tmp_path / "home-a", listen=True)
    assert a.call("POST", "/v1/resolve", {"handle": TFHUB})[0] == 200
    origin.down = True
    origin.reset_counters()
    # A plain tensorflow_hub client (no shim) uses daemon A as its hub.
    out, _ = run_job("plain", f"{a.base}/google/mymul/1", env={"TFHUB_CACHE_DIR": str(tmp_path / "plain")})
    assert out["call"] == [6.0]
    code, body = http("GET", f"{a.base}/google/mymul/1?tf-hub-format=compressed&compression=gzip")
    assert code == 200 and body[:2] == b"\x1f\x8b"
    assert http("GET", f"{a.base}/google/nothing/1?tf-hub-format=compressed")[0] in (404, 502)
    assert http("GET", f"{a.base}/google/../../etc/passwd?tf-hub-format=compressed")[0] == 404
    assert http("GET", f"{a.base}/v1/blobs/{'0' * 64}")[0] == 404
    # Daemon B: origin down, A as upstream; a dead upstream first is skipped.
    origin.reset_counters()  # (A went to the down origin for /google/nothing above)
    dead = f"http://127.0.0.1:{free_port()}"
    b = start(daemons, cli, tmp_path / "home-b", env={"CACHEMGR_UPSTREAMS": f"{dead} {a.base}"})
    code, doc = b.call("POST", "/v1/resolve", {"handle": TFHUB})
    assert code == 200, doc
    assert Path(doc["path"], "saved_model.pb").is_file()
    info = json.loads(cli("info", TFHUB, "--json", env={"CACHEMGR_HOME": str(tmp_path / "home-b")}).out)
    assert info["source"] == f"upstream {a.base}"
    assert origin.requests == [], "daemon B went to the (down) origin instead of its upstream"


def test_adopts_directories_plain_hub_downloaded(cli: Cli, origin: FakeOrigin, home: Path,
                                                 daemons: list[Daemon]) -> None:
    import hashlib

    assert cli("pull", TFHUB).code == 0  # the store has the model; plain hub fetches a copy from elsewhere
    url = origin.hosting_url("google", "mymul", 1)
    out, _ = run_job("plain", url, url, env={"TFHUB_CACHE_DIR": str(home / "view")})  # no shim, no daemon
    entry = home / "view" / hashlib.sha1(url.encode()).hexdigest()
    assert entry.is_dir() and not entry.is_symlink()
    reader = (entry / "saved_model.pb").open("rb")  # a reader with a file open across the adoption
    original = (entry / "saved_model.pb").read_bytes()
    blobs_before = sum(1 for _ in (home / "blobs").rglob("*") if _.is_file())
    d = start(daemons, cli, home)
    assert wait_for(lambda: entry.is_symlink(), 30), d.output()
    assert reader.read() == original
    reader.close()
    assert (entry / "saved_model.pb").read_bytes() == original
    info = json.loads(cli("info", url, "--json").out)
    assert info["source"] == "adopted" and cli("path", url + "/").code == 0
    blobs_after = sum(1 for _ in (home / "blobs").rglob("*") if _.is_file())
    assert blobs_after - blobs_before < info["files"], "adoption did not deduplicate shared files"
    out, _ = run_job("plain", url, url, env={"TFHUB_CACHE_DIR": str(home / "view")})
    assert origin.completed("hosting") == 1, "hub downloaded again after adoption"


def test_cleans_stale_hub_locks(cli: Cli, home: Path, daemons: list[Daemon]) -> None:
    d = start(daemons, cli, home)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    name = "a" * 40
    lock = home / "view" / f"{name}.lock"
    tmp_dir = home / "view" / f"{name}.0123abcd.tmp"
    tmp_dir.mkdir()
    (tmp_dir / "partial").write_bytes(b"x" * 100)
    live_lock = home / "view" / f"{'b' * 40}.lock"
    live_lock.write_text(f"{__import__('socket').gethostname()}.{os.getpid()}.feedbeef")
    lock.write_text(f"{__import__('socket').gethostname()}.{dead.pid}.0123abcd")
    assert wait_for(lambda: not lock.exists() and not tmp_dir.exists(), 20), d.output()
    assert live_lock.exists(), "a lock whose process is alive must stay"


def test_prefetch_file_triggers_fetch(cli: Cli, origin: FakeOrigin, home: Path, daemons: list[Daemon]) -> None:
    start(daemons, cli, home)
    tmp = home / "prefetch.toml.tmp"
    tmp.write_text(f'handles = ["{TFHUB}", "https://tfhub.dev/google/text-embed/2"]\n')
    os.replace(tmp, home / "prefetch.toml")
    assert wait_for(lambda: cli("path", "https://tfhub.dev/google/text-embed/2").code == 0
                    and cli("path", TFHUB).code == 0, 60)
    assert origin.completed("gcs") == 2


def test_sigterm_mid_download_exits_cleanly(cli: Cli, origin: FakeOrigin, home: Path,
                                            daemons: list[Daemon]) -> None:
    d = start(daemons, cli, home)
    origin.hold("gcs", after_bytes=500)
    waiter = subprocess.Popen([sys.executable, "-c", (
        "import sys; from cachemgr.client.daemon_client import call; print(call(sys.argv[1], 'POST', '/v1/resolve',"
        " {'handle': sys.argv[2]}))"), str(d.sock), TFHUB], env=BASE_ENV, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert wait_for(lambda: origin.started("gcs") == 1, 30)
    t0 = time.monotonic()
    code = d.stop(signal.SIGTERM, timeout=20)
    elapsed = time.monotonic() - t0
    waiter.communicate(timeout=30)
    assert code == 0, d.output()
    assert elapsed < 10, f"SIGTERM took {elapsed:.1f}s"
    assert os.listdir(home / "tmp") == [] and os.listdir(home / "refs") == []
    assert not d.sock.exists()
    assert "stopped" in d.output()


def test_sighup_reloads_config(cli: Cli, home: Path, tmp_path: Path, daemons: list[Daemon]) -> None:
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('upstreams = ["http://127.0.0.1:1"]\n')
    d = start(daemons, cli, home, "--config", str(cfg))
    assert d.call("GET", "/v1/status")[1]["upstreams"] == ["http://127.0.0.1:1"]
    cfg.write_text('upstreams = ["http://127.0.0.1:2"]\n')
    os.kill(d.proc.pid, signal.SIGHUP)
    assert wait_for(lambda: d.call("GET", "/v1/status")[1]["upstreams"] == ["http://127.0.0.1:2"], 10)
    cfg.write_text("upstreams = 5\n")  # a bad reload is refused; the daemon keeps running
    os.kill(d.proc.pid, signal.SIGHUP)
    assert wait_for(lambda: "reload refused" in d.output(), 10)
    assert d.call("GET", "/v1/health")[0] == 200


def test_api_errors(cli: Cli, origin: FakeOrigin, home: Path, daemons: list[Daemon]) -> None:
    d = start(daemons, cli, home, env={"CACHEMGR_TOKEN": "s3cret-token"}, listen=True)
    url = f"{d.base}/v1/resolve"
    body = json.dumps({"handle": TFHUB}).encode()
    code, raw = http("POST", url, body)
    assert code == 401 and json.loads(raw)["error"]["type"] == "bad_token"
    code, raw = http("POST", url, body, {"Authorization": "Bearer wrong"})
    assert code == 401
    code, raw = http("POST", url, b"{not json", {"Authorization": "Bearer s3cret-token"})
    assert code == 400 and "not valid JSON" in json.loads(raw)["error"]["message"]
    code, raw = http("POST", url, b"x" * (2 * 1024 * 1024), {"Authorization": "Bearer s3cret-token"})
    assert code == 413
    code, raw = http("POST", url, json.dumps({"handle": "nope"}).encode(), {"Authorization": "Bearer s3cret-token"})
    assert code == 422 and json.loads(raw)["error"]["type"] == "bad_handle"
    origin.fail("gcs", 503, times=None)
    code, doc = d.call("POST", "/v1/resolve", {"handle": TFHUB})  # the Unix socket needs no token
    assert code == 502 and doc["error"]["upstream_status"] == 503
    origin.reset()
    code, raw = http("POST", url, body, {"Authorization": "Bearer s3cret-token"})
    assert code == 200
    code, raw = http("GET", f"{d.base}/v1/health")  # read-only endpoints need no token
    assert code == 200
    code, raw = http("GET", f"{d.base}/metrics")
    text = raw.decode()
    for metric in ("cachemgr_hits_total", "cachemgr_fetches_total 2", "cachemgr_upstream_bytes_total",
                   "cachemgr_inflight_fetches 0", 'cachemgr_errors_total{type="bad_handle"} 1',
                   "cachemgr_store_bytes", "cachemgr_store_entries 1"):
        assert metric in text, metric
    status = cli("status", "--json", env={"CACHEMGR_SOCKET": str(d.sock)})
    assert status.code == 0 and json.loads(status.out)["store_entries"] == 1


def test_bad_config_stops_the_daemon_at_start(cli: Cli, home: Path, tmp_path: Path) -> None:
    r = cli("daemon", "--listen", "nonsense", "--socket", str(tmp_path / "s.sock"))
    assert r.code == 3 and "HOST:PORT" in r.err
    cfg = tmp_path / "c.toml"
    cfg.write_text("token = 'short'\n")
    r = cli("--config", str(cfg), "daemon", "--socket", str(tmp_path / "s.sock"))
    assert r.code == 3 and "token" in r.err


def test_unreachable_daemon_status(cli: Cli, tmp_path: Path) -> None:
    r = cli("status", env={"CACHEMGR_SOCKET": str(tmp_path / "none.sock")})
    assert r.code == 1 and "no cachemgr daemon" in r.err and "cachemgr daemon" in r.err


def test_shim_install_writes_pth(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    # A fresh venv that sees what this interpreter sees. --system-site-packages would give it the
    # base interpreter's packages instead, which lack ours when the tests run inside a venv.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    outer = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib) / "outer-site.pth").write_text(
        "import site; " + "; ".join(f"site.addsitedir({p!r})" for p in outer) + "\n")
    env = {**BASE_ENV, "PYTHONPATH": str(REPO)}
    r = subprocess.run([str(py), "-m", "cachemgr", "shim", "install"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    pth = Path(r.stdout.split()[-1])
    assert pth.read_text() == "import cachemgr.shim\n" and str(venv) in str(pth)
    probe = ("import sys; import cachemgr.shim as s; print(any(isinstance(h, s._HubImportHook) "
             "for h in sys.meta_path), 'tensorflow' in sys.modules)")
    out = subprocess.run([str(py), "-c", probe], env=env, capture_output=True, text=True).stdout.split()
    assert out == ["True", "False"], out  # hook armed; nothing heavy imported at start
    r = subprocess.run([str(py), "-m", "cachemgr", "shim", "uninstall"], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and not pth.exists()
    assert shutil.which("python")


def test_daemon_prefetches_pins_and_prunes_on_watermarks(cli: Cli, origin: FakeOrigin, home: Path,
                                                         daemons: list[Daemon]) -> None:
    # A pin recorded offline is wanted-but-missing; the daemon fetches it.
    r = cli("--offline", "pin", "https://tfhub.dev/google/text-embed/1", "--reason", "prod")
    assert r.code == 0, r.err
    assert cli("pull", TFHUB).code == 0  # unpinned
    env = {"CACHEMGR_PRUNE_MAX_SIZE": "1", "CACHEMGR_PRUNE_GRACE": "0s"}
    d = start(daemons, cli, home, env=env)
    assert wait_for(lambda: cli("path", "https://tfhub.dev/google/text-embed/1").code == 0, 60), d.output()
    # The 1-byte budget evicts what is not pinned; the pinned model stays.
    assert wait_for(lambda: cli("path", TFHUB).code == 5, 60), d.output()
    assert cli("path", "https://tfhub.dev/google/text-embed/1").code == 0


def corrupt_saved_model_pb(cli: Cli, home: Path, handle: str) -> tuple[Path, str]:
    """Flip a byte in the stored blob of ``handle``'s saved_model.pb; returns (blob, its true digest)."""
    info = json.loads(cli("info", handle, "--json").out)
    manifest = json.loads((home / "manifests" / "sha256" / f"{info['manifest']}.json").read_text())
    digest = next(f[3] for f in manifest["files"] if f[0] == "saved_model.pb")
    blob = home / "blobs" / "sha256" / digest[:2] / digest
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[10] ^= 0xFF
    blob.write_bytes(bytes(data))
    return blob, digest


def test_daemon_refetches_a_quarantined_model(cli: Cli, origin: FakeOrigin, home: Path,
                                              daemons: list[Daemon]) -> None:
    assert cli("pull", TFHUB).code == 0
    blob, digest = corrupt_saved_model_pb(cli, home, TFHUB)
    r = cli("verify")
    assert r.code == 11, r.out + r.err
    r = cli("path", TFHUB)
    assert r.code == 5 and "out of service" in r.err
    d = start(daemons, cli, home)
    code, doc = d.call("POST", "/v1/resolve", {"handle": TFHUB})
    assert code == 200, doc
    assert __import__("hashlib").sha256((Path(doc["path"]) / "saved_model.pb").read_bytes()).hexdigest() == digest
    assert origin.completed("gcs") == 2


def test_daemon_background_scrub_quarantines_corruption(cli: Cli, origin: FakeOrigin, home: Path,
                                                        daemons: list[Daemon]) -> None:
    import hashlib

    assert cli("pull", TFHUB).code == 0
    blob, digest = corrupt_saved_model_pb(cli, home, TFHUB)
    view = home / "view" / hashlib.sha1(TFHUB.encode()).hexdigest()
    assert view.is_symlink()
    d = start(daemons, cli, home, env={"CACHEMGR_SCRUB_RATE": "100M"})
    assert wait_for(lambda: not blob.exists() and not os.path.lexists(view), 60), d.output()
    assert any((home / "quarantine").iterdir())
    assert wait_for(lambda: "scrub: " in d.output() and "1 problem" in d.output(), 30), d.output()
