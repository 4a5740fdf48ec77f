"""The daemon logs its work (issue 13): one line per fetch, failed resolve, mirror serve, prune and
scrub, as text or as JSON lines (``--log-format json``), at ``--log-level``; the primary and its
workers alike."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from tests.support.cli import Cli
from tests.support.daemons import Daemon, free_port, http, wait_for
from tests.support.origin import FakeOrigin
from tests.support.suite import Archives

TFHUB = "https://tfhub.dev/google/mymul/1"
MISSING = "https://tfhub.dev/google/no-such-model/1"  # the origin answers 404
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")




def start(daemons: list[Daemon], cli: Cli, home: Path, *daemon_args: str, env: dict[str, str] | None = None,
          ) -> Daemon:
    for attempt in range(3):  # the free port may be taken by another test's process before the daemon binds it
        d = Daemon(home, {**cli.env, **(env or {})}, listen=f"127.0.0.1:{free_port()}", daemon_args=daemon_args)
        daemons.append(d)
        try:
            return d.wait_ready()
        except AssertionError as exc:
            if "Address already in use" not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def json_lines(d: Daemon) -> list[dict[str, Any]]:
    """Every line the daemon wrote, each of which must be one JSON object."""
    out = []
    for line in d.output().splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON log line: {line!r}") from None
        assert isinstance(doc, dict), line
        out.append(doc)
    return out


def only(lines: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [x for x in lines if all(x.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"want one line with {match}, got {found}"
    return found[0]


def test_json_lines_for_a_fetch_a_failed_resolve_and_a_mirror_serve(
        cli: Cli, origin: FakeOrigin, home: Path, archives: Archives, daemons: list[Daemon]) -> None:
    d = start(daemons, cli, home, "--log-format", "json", env={"CACHEMGR_WORKERS": "2"})
    status, doc = d.call("POST", "/v1/resolve", {"handle": TFHUB})
    assert status == 200 and doc["fetched"], doc
    status, doc = d.call("POST", "/v1/resolve", {"handle": MISSING})
    assert status == 502 and doc["error"]["upstream_status"] == 404, doc
    code, body = http("GET", f"{d.base}/google/mymul/1?tf-hub-format=compressed")
    assert code == 200 and body
    d.stop()
    lines = json_lines(d)  # the primary's and the worker's lines alike
    for line in lines:
        assert TS.match(line["ts"]) and line["level"] in ("debug", "info", "warning", "error"), line
        assert isinstance(line["logger"], str) and isinstance(line["msg"], str) and isinstance(line["pid"], int)

    fetch = only(lines, event="fetch", handle=TFHUB)
    assert fetch["level"] == "info" and fetch["result"] == "pulled" and fetch["source"] == "origin"
    assert fetch["bytes"] == len(archives.mymul) and fetch["seconds"] >= 0
    assert fetch["url"].startswith("https://storage.googleapis.com/") and "?" not in fetch["url"]  # no signature
    assert fetch["manifest"] == doc_manifest(cli)
    assert TFHUB in fetch["msg"] and str(len(archives.mymul)) in fetch["msg"]

    failed_fetch = only(lines, event="fetch", handle=MISSING)
    assert failed_fetch["result"] == "failed" and failed_fetch["error"] == "upstream_failed"
    assert failed_fetch["level"] == "warning" and "404" in failed_fetch["reason"]
    failed = only(lines, event="resolve_failed", handle=MISSING)
    assert failed["status"] == 502 and failed["error"] == "upstream_failed" and failed["level"] == "warning"
    assert "404" in failed["reason"] and MISSING in failed["msg"]

    served = only(lines, event="mirror_serve")
    assert served["path"] == "/google/mymul/1" and served["handle"] == TFHUB and served["peer"] == "127.0.0.1"
    assert len(body) < served["bytes"] < len(body) + 4096  # what went out: the body and the response head
    assert served["status"] == 200 and served["result"] == "ok"
    assert served["logger"] == "cachemgrd.mirror"
    assert any(x["msg"].startswith("cachemgr daemon ready on ") for x in lines)


def doc_manifest(cli: Cli) -> str:
    r = cli("info", TFHUB, "--json")
    assert r.code == 0, r.err
    return str(json.loads(r.out)["manifest"])


def test_the_text_line_of_a_fetch(cli: Cli, origin: FakeOrigin, home: Path, archives: Archives,
                                  daemons: list[Daemon]) -> None:
    d = start(daemons, cli, home)
    assert d.call("POST", "/v1/resolve", {"handle": TFHUB})[0] == 200
    d.stop()
    # The URL is the public one the handle maps to (the mirror rule sends it to the fake origin).
    url = "https://storage.googleapis.com/kaggle-models-data/1000/tensorFlow2/mymul/1/model.tar.gz"
    pattern = (re.escape(f"cachemgrd: INFO fetch {TFHUB} from origin {url}: pulled, {len(archives.mymul)} bytes in ")
               + r"\d+\.\d\d s")
    lines = [x for x in d.output().splitlines() if " fetch " in x]
    assert len(lines) == 1 and re.fullmatch(pattern, lines[0]), lines


def test_log_level_warning_keeps_only_warnings(cli: Cli, origin: FakeOrigin, home: Path,
                                                daemons: list[Daemon]) -> None:
    d = start(daemons, cli, home, env={"CACHEMGR_LOG_LEVEL": "warning", "CACHEMGR_LOG_FORMAT": "json"})
    assert d.call("POST", "/v1/resolve", {"handle": TFHUB})[0] == 200
    assert d.call("POST", "/v1/resolve", {"handle": MISSING})[0] == 502
    d.stop()
    lines = json_lines(d)
    assert {x["level"] for x in lines} == {"warning"}, lines
    assert only(lines, event="resolve_failed", handle=MISSING)
    assert not [x for x in lines if x.get("handle") == TFHUB]


def test_bad_log_options_are_usage_errors(cli: Cli) -> None:
    r = cli("daemon", "--log-format", "xml")
    assert r.code == 2 and "--log-format" in r.err and "text" in r.err and "json" in r.err, r.err
    r = cli("daemon", "--help")
    assert r.code == 0 and "--log-level" in r.out and "--log-format" in r.out and "CACHEMGR_LOG_FORMAT" in r.out


def test_json_lines_for_the_daemons_prune_and_scrub(cli: Cli, home: Path, daemons: list[Daemon]) -> None:
    assert cli("pull", TFHUB).code == 0
    (ref_path,) = (home / "refs").glob("*.json")  # pulled a day ago and never used since
    doc = json.loads(ref_path.read_text())
    doc["fetched_at"] = time.time() - 86400
    ref_path.write_text(json.dumps(doc))
    os.utime(ref_path, (time.time() - 86400,) * 2)
    d = start(daemons, cli, home, "--log-format", "json", env={
        "CACHEMGR_PRUNE_UNUSED_FOR": "1h", "CACHEMGR_PRUNE_GRACE": "0s", "CACHEMGR_SCRUB_RATE": "100M"})
    assert wait_for(lambda: '"event": "prune"' in d.output() and '"event": "scrub"' in d.output(), 60), d.output()
    d.stop()
    lines = json_lines(d)
    prune = only(lines, event="prune")
    assert prune["evicted"] == [TFHUB] and prune["freed_bytes"] > 0 and prune["removed"]["blobs"] > 0, prune
    assert prune["logger"] == "cachemgr.lifecycle.prune_exec" and prune["level"] == "info"
    scrub = [x for x in lines if x.get("event") == "scrub"]
    assert scrub and scrub[0]["logger"] == "cachemgr.lifecycle.scrub" and scrub[0]["problems"] == 0, scrub
    assert isinstance(scrub[0]["blobs"], int) and isinstance(scrub[0]["partial"], bool)


def test_the_supervisors_lines_about_workers_are_json_too(cli: Cli, home: Path, daemons: list[Daemon]) -> None:
    d = start(daemons, cli, home, "--log-format", "json", env={"CACHEMGR_WORKERS": "2"})
    (worker,) = d.call("GET", "/v1/status")[1]["workers"]
    os.kill(worker, signal.SIGKILL)
    assert wait_for(lambda: '"event": "worker_started"' in d.output(), 60), d.output()
    d.stop()
    lines = json_lines(d)
    exited = only(lines, event="worker_exited")
    assert exited["worker"] == worker and exited["code"] == -signal.SIGKILL and exited["level"] == "warning"
    started = only(lines, event="worker_started")
    assert started["worker"] != worker and started["pid"] == d.proc.pid
