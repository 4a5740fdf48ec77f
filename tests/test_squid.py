"""Fan-out through a real Squid (issue 12): 8 node daemons, one site daemon, Squid in between.

Every part is real: Debian's squid with the config of docs/squid.conf (tests/support/squid.py),
``cachemgr daemon`` children for the site and each node, real SavedModels. The site counts
what it sent from its own log (one ``sent /v1/blobs/<d>`` line per body).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import Cli
from tests.support.daemons import Daemon, free_port, wait_for
from tests.support.env import BASE_ENV, REPO
from tests.support.squid import Squid
from tests.support.suite import Models

pytestmark = pytest.mark.slow
NODES = 8
HANDLE = "https://tfhub.dev/site/model/1"
_SENT = re.compile(r"sent /v1/(blobs|manifests)/([0-9a-f]{64}): (\d+) of (\d+) bytes")




def start(daemons: list[Daemon], home: Path, env: dict[str, str], listen: bool = False) -> Daemon:
    d = Daemon(home, {**env, "CACHEMGR_WORKERS": "1"}, listen=f"127.0.0.1:{free_port()}" if listen else None)
    daemons.append(d)
    return d


def base_env(tmp_path: Path) -> dict[str, str]:
    """No origin at all: tfhub.dev is rewritten to a port nobody listens on."""
    return {**BASE_ENV, "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
            "CACHEMGR_MIRRORS": f"https://tfhub.dev/=http://127.0.0.1:{free_port()}/", "CACHEMGR_RETRIES": "0"}


def site(daemons: list[Daemon], tmp_path: Path, name: str, model: Path) -> Daemon:
    env = base_env(tmp_path)
    assert Cli(tmp_path / name, env)("add", HANDLE, str(model)).code == 0
    return start(daemons, tmp_path / name, env, listen=True)


def blobs_of(home: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (home / "blobs").rglob("*") if p.is_file()}


def sent(d: Daemon) -> Counter[str]:
    """How many whole bodies of each digest the daemon sent."""
    return Counter(m.group(2) for m in _SENT.finditer(d.output()) if m.group(3) == m.group(4))


def resolve_all(nodes: list[Daemon]) -> list[tuple[int, dict[str, Any]]]:
    """Every node resolves HANDLE at the same moment (a cold start)."""
    results: list[tuple[int, dict[str, Any]]] = [(0, {})] * len(nodes)
    go = threading.Barrier(len(nodes))

    def one(i: int) -> None:
        go.wait()
        results[i] = nodes[i].call("POST", "/v1/resolve", {"handle": HANDLE})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(nodes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return results


def check_nodes(tmp_path: Path, nodes: list[Daemon], source: str) -> None:
    for node in nodes:
        cli = Cli(node.home, base_env(tmp_path))
        verify = cli("verify", "--json")
        assert verify.code == 0, (node.home, verify.out, verify.err)
        info = json.loads(cli("info", HANDLE, "--json").out)
        assert info["source"] == f"upstream {source}", info


def test_eight_nodes_cold_start_through_squid_and_the_site_sends_each_blob_once(
        models: Models, tmp_path: Path, daemons: list[Daemon]) -> None:
    the_site = site(daemons, tmp_path, "site", models.text_v1)
    wanted = blobs_of(the_site.home)
    with Squid() as squid:
        env = {**base_env(tmp_path), "CACHEMGR_UPSTREAMS": the_site.base, "CACHEMGR_PROXY": squid.url}
        nodes = [start(daemons, tmp_path / f"node{i}", env) for i in range(NODES)]
        for d in [the_site, *nodes]:
            d.wait_ready(120)
        results = resolve_all(nodes)
        assert all(code == 200 and doc["fetched"] for code, doc in results), results
        counts = sent(the_site)
        assert {d: counts[d] for d in wanted} == {d: 1 for d in wanted}, (counts, the_site.output()[-3000:])
        manifests = [d for d in counts if d not in wanted]
        assert [counts[d] for d in manifests] == [1], counts  # the model's manifest, once too
        # Every node's blob requests went through Squid (one access line per node and blob).
        through = Counter(line.split()[6].rsplit("/", 1)[1] for line in squid.access_lines()
                          if "/v1/blobs/" in line)
        assert {d: through[d] for d in wanted} == {d: NODES for d in wanted}, squid.access_lines()
    check_nodes(tmp_path, nodes, the_site.base)


def build_big(path: Path, size: int) -> Path:
    script = ("import sys; from pathlib import Path; from tests.support.models import build_big_model; "
              "build_big_model(Path(sys.argv[1]), int(sys.argv[2]), chunk_bytes=8 << 20)")
    subprocess.run([sys.executable, "-c", script, str(path), str(size)], check=True, env=BASE_ENV, cwd=REPO)
    return path


def partial_upstream_bytes(nodes: list[Daemon]) -> int:
    """The bytes of blobs the nodes are receiving right now (their ``upblob`` staging files)."""
    total = 0
    for node in nodes:
        for f in (node.home / "tmp").glob("upblob*/blob"):
            try:
                total = max(total, f.stat().st_size)
            except FileNotFoundError:
                pass
    return total


def test_the_site_killed_mid_transfer_nodes_fail_over_to_the_next_group(
        tmp_path: Path, daemons: list[Daemon]) -> None:
    model = build_big(tmp_path / "big", 24 << 20)
    site1 = site(daemons, tmp_path, "site1", model)
    site2 = site(daemons, tmp_path, "site2", model)
    assert site1.listen
    port1 = site1.listen.rsplit(":", 1)[1]
    # Squid reads from site 1 at 2 MB/s (a delay pool), so that the kill lands mid-transfer.
    slow = [f"acl site1 port {port1}", "delay_pools 1", "delay_class 1 1", "delay_parameters 1 2000000/2000000",
            "delay_access 1 allow site1", "delay_access 1 deny all"]
    with Squid(extra=slow) as squid:
        env = {**base_env(tmp_path), "CACHEMGR_UPSTREAMS": f"{site1.base};{site2.base}",
               "CACHEMGR_PROXY": squid.url}
        nodes = [start(daemons, tmp_path / f"node{i}", env) for i in range(NODES)]
        for d in [site1, site2, *nodes]:
            d.wait_ready(120)
        results: list[tuple[int, dict[str, Any]]] = []
        runner = threading.Thread(target=lambda: results.extend(resolve_all(nodes)))
        runner.start()
        assert wait_for(lambda: partial_upstream_bytes(nodes) > 1 << 20, 120), "no node started receiving a blob"
        site1.stop(signal.SIGKILL)
        runner.join(300)
        assert len(results) == NODES and all(code == 200 for code, _ in results), results
        biggest = max(blobs_of(site1.home).items(), key=lambda kv: kv[1])[0]
        assert sent(site1)[biggest] == 0, "site 1 finished the big blob before it was killed"
        assert sent(site2)[biggest] == 1, site2.output()[-3000:]
    check_nodes(tmp_path, nodes, site2.base)
    log = nodes[0].output()
    assert f"upstream {site1.base} failed" in log and "trying the next" in log, log[-3000:]


def cached_copy(squid: Squid, blob: bytes) -> tuple[Path, int] | None:
    """Squid's file holding ``blob`` (its body is the file's tail) and the body's offset there."""
    for f in (squid.root / "cache").rglob("*"):
        if f.is_file() and f.stat().st_size >= len(blob):
            data = f.read_bytes()
            if data.endswith(blob):
                return f, len(data) - len(blob)
    return None


def test_a_corrupt_cached_copy_is_fetched_again_with_no_cache(models: Models, tmp_path: Path,
                                                               daemons: list[Daemon]) -> None:
    the_site = site(daemons, tmp_path, "site", models.text_v1)
    digest, size = max(blobs_of(the_site.home).items(), key=lambda kv: kv[1])
    blob = next(p for p in (the_site.home / "blobs").rglob(digest)).read_bytes()
    with Squid(extra=["cache_mem 0 MB"]) as squid:  # every hit from disk, where the test corrupts it
        env = {**base_env(tmp_path), "CACHEMGR_UPSTREAMS": the_site.base, "CACHEMGR_PROXY": squid.url}
        first = start(daemons, tmp_path / "first", env)
        for d in (the_site, first):  # the site too: a node asking before it listens gets Squid's 503
            d.wait_ready(120)
        code, doc = first.call("POST", "/v1/resolve", {"handle": HANDLE})
        assert code == 200, (doc, first.output()[-3000:])
        assert wait_for(lambda: cached_copy(squid, blob) is not None, 30), "Squid did not store the blob on disk"
        found = cached_copy(squid, blob)
        assert found is not None
        path, offset = found
        with path.open("r+b") as fh:  # one byte of the body flipped in Squid's cache
            fh.seek(offset + size // 2)
            byte = fh.read(1)
            fh.seek(offset + size // 2)
            fh.write(bytes([byte[0] ^ 0xFF]))
        second = start(daemons, tmp_path / "second", env)
        second.wait_ready(120)
        code, doc = second.call("POST", "/v1/resolve", {"handle": HANDLE})
        assert code == 200, doc
        assert "arrived corrupt" in second.output() and "no-cache" in second.output(), second.output()[-3000:]
        assert sent(the_site)[digest] == 2, "the site should have sent the blob again, once"
        codes = [line.split()[3] for line in squid.access_lines() if f"/v1/blobs/{digest}" in line]
        assert codes == ["TCP_MISS/200", "TCP_HIT/200", "TCP_MISS/200"], codes  # the retry went past the cache
    check_nodes(tmp_path, [second], the_site.base)
