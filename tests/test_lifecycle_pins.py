"""`cachemgr pin/unpin/pins`, last use from `cachemgr path`, and `cachemgr du`."""

from __future__ import annotations

import json
import time
from pathlib import Path

from cachemgr.lifecycle.pins import wanted_handles
from cachemgr.store.objects import Store
from tests.support.cli import Cli
from tests.support.lifecycle import MYMUL, TEXT1, TEXT2, sha1
from tests.support.origin import FakeOrigin
from tests.support.suite import Archives


def pins(cli: Cli, *args: str, env: dict[str, str] | None = None) -> dict[str, dict[str, object]]:
    r = cli("pins", "--json", *args, env=env)
    assert r.code == 0, r.err
    return {p["handle"]: p for p in json.loads(r.out)["pins"]}


def test_pin_fetches_a_missing_handle_and_records_who_when_why(cli: Cli, home: Path, origin: FakeOrigin) -> None:
    r = cli("pin", MYMUL + "/", "--reason", "paper deadline", "--until", "30d", "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["action"] == "fetched" and origin.completed("gcs") == 1
    pin = pins(cli)[MYMUL]
    assert pin["state"] == "ok" and pin["upstream"] == "unchanged"
    assert "@" in str(pin["who"]) and pin["reason"] == "paper deadline" and pin["until"]
    assert pin["digest"] == json.loads(cli("info", MYMUL, "--json").out)["manifest"]
    assert (home / "pins").is_dir() and len(list((home / "pins").glob("*.json"))) == 1
    # Pinning again under a Kaggle alias updates the same pin (keyed by the stored handle).
    kaggle = "https://www.kaggle.com/models/google/mymul/tensorFlow2/mymul/1"
    assert cli("pin", kaggle).code == 0 and list(pins(cli)) == [MYMUL]
    assert cli("unpin", kaggle).code == 0 and pins(cli) == {}
    r = cli("unpin", MYMUL)
    assert r.code == 5 and "not pinned" in r.err


def test_offline_pin_is_wanted_but_missing_until_fetched(cli: Cli, home: Path) -> None:
    assert cli("pull", TEXT1).code == 0  # the store exists
    r = cli("pin", MYMUL, env={"CACHEMGR_OFFLINE": "1"})
    assert r.code == 0 and r.out.startswith("wanted")
    pin = pins(cli, "--no-check")[MYMUL]
    assert pin["state"] == "missing" and pin["digest"] is None and "wanted but missing" in str(pin["detail"])
    assert wanted_handles(Store(home)) == [MYMUL]
    assert cli("pull", MYMUL).code == 0
    assert pins(cli, "--no-check")[MYMUL]["state"] == "ok" and wanted_handles(Store(home)) == []


def test_pins_flags_upstream_change(cli: Cli, origin: FakeOrigin, archives: Archives) -> None:
    handle = "https://tfhub.dev/google/pin-drift/1"
    origin.add_model("google", "pin-drift", 1, archives.mymul)
    assert cli("pin", handle).code == 0
    assert pins(cli)[handle]["upstream"] == "unchanged"
    origin.add_model("google", "pin-drift", 1, archives.text_v1)  # new content, new ETag
    pin = pins(cli)[handle]
    assert pin["upstream"] == "changed" and "upstream content changed" in str(pin["detail"])
    assert "upstream-changed" in cli("pins").out
    assert pins(cli, "--no-check")[handle]["upstream"] is None
    assert pins(cli, env={"CACHEMGR_OFFLINE": "1"})[handle]["upstream"] is None


def pin_expiring_soon(cli: Cli, handle: str) -> None:
    """Pin ``handle`` for one second and wait until that second has passed (a past --until is refused)."""
    r = cli("pin", handle, "--until", "1s", "--json")
    assert r.code == 0, r.err
    until = float(json.loads(r.out)["pin"]["until"])
    while time.time() <= until + 0.05:
        time.sleep(0.1)


def test_expired_pin_stops_protecting(cli: Cli, home: Path) -> None:
    assert cli("pull", MYMUL, TEXT1).code == 0
    pin_expiring_soon(cli, MYMUL)
    assert cli("pin", TEXT1).code == 0
    all_pins = pins(cli, "--no-check")
    assert all_pins[MYMUL]["state"] == "expired" and "no longer protects" in str(all_pins[MYMUL]["detail"])
    doc = json.loads(cli("prune", "--max-size", "0", "--grace", "0", "--json").out)
    assert doc["result"]["evicted"] == [MYMUL]
    r = cli("pin", MYMUL, "--until", "next tuesday")
    assert r.code == 2 and "--until 'next tuesday' is neither a date" in r.err


def test_a_past_until_is_refused_and_nothing_is_written(cli: Cli, home: Path) -> None:
    assert cli("pull", MYMUL).code == 0
    for past in ("2020-01-01", "2001-01-01T18:00", "0s"):
        r = cli("pin", MYMUL, "--until", past)
        lines = r.err.strip().splitlines()
        assert r.code == 2 and len(lines) == 1, (past, r.code, r.err)
        assert lines[0].startswith(f"cachemgr: error: --until '{past}' is ") and "in the" in lines[0], r.err
        assert "30d" in lines[0], r.err
    assert not (home / "pins").exists() or not list((home / "pins").iterdir())


def test_pinning_again_keeps_until_and_reason_and_says_what_changed(cli: Cli) -> None:
    r = cli("pin", MYMUL, "--until", "30d", "--reason", "paper")
    assert r.code == 0, r.err
    until = pins(cli, "--no-check")[MYMUL]["until"]
    assert "until " in r.out and "re-pinned" not in r.out
    r = cli("pin", MYMUL)  # again, with nothing new: the expiry and reason stay
    assert r.code == 0, r.err
    again = pins(cli, "--no-check")[MYMUL]
    assert again["until"] == until and again["reason"] == "paper"
    note = r.out.splitlines()[-1]
    assert note.startswith("  re-pinned: nothing changed; kept until ") and "reason 'paper'" in note, r.out
    r = cli("pin", MYMUL, "--reason", "camera-ready", "--json")
    doc = json.loads(r.out)
    assert doc["repinned"] and doc["pin"]["until"] == until and doc["pin"]["reason"] == "camera-ready"
    assert doc["changes"] == ["reason 'paper' -> 'camera-ready'"] and doc["kept"][0].startswith("until ")
    r = cli("pin", MYMUL, "--until", "2d")
    assert r.code == 0 and float(str(pins(cli, "--no-check")[MYMUL]["until"])) < float(str(until))
    assert "  re-pinned: changed until " in r.out and "kept reason 'camera-ready'" in r.out, r.out


def test_pins_check_exits_13_when_a_pin_does_not_hold(cli: Cli, origin: FakeOrigin, archives: Archives) -> None:
    handle = "https://tfhub.dev/google/pin-check/1"
    origin.add_model("google", "pin-check", 1, archives.mymul)
    assert cli("pin", handle, "--reason", "release").code == 0
    r = cli("pins", "--check")
    assert r.code == 0 and handle in r.out, r.err
    origin.add_model("google", "pin-check", 1, archives.text_v1)  # upstream changed
    r = cli("pins", "--check")
    assert r.code == 13 and handle in r.out, (r.code, r.err)
    line = r.err.strip()
    assert line == (f"cachemgr: error: pins --check: 1 pin of 1 not holding: {handle} (upstream changed); "
                    "pull or re-pin them, or unpin what is no longer needed"), r.err
    assert cli("pins").code == 0  # listing alone never fails
    r = cli("pins", "--check", "--json")
    assert r.code == 13 and json.loads(r.out)["failing"] == [handle]
    # Offline, upstream is not asked; an expired pin and a wanted-but-missing one both fail the check.
    origin.add_model("google", "pin-check", 1, archives.mymul)
    assert cli("pins", "--check").code == 0
    offline = {"CACHEMGR_OFFLINE": "1"}
    assert cli("pin", TEXT2, env=offline).code == 0
    pin_expiring_soon(cli, handle)
    r = cli("pins", "--check", env=offline)
    assert r.code == 13 and "2 pins of 2 not holding" in r.err, r.err
    assert f"{handle} (expired)" in r.err and f"{TEXT2} (missing)" in r.err, r.err


def test_path_records_last_use_and_du_reports_sharing(cli: Cli, home: Path) -> None:
    assert cli("pull", MYMUL, TEXT1, TEXT2).code == 0
    assert cli("pin", TEXT2).code == 0
    before = {m["handle"]: m for m in json.loads(cli("du", "--json").out)["models"]}
    assert all(m["last_use"] is None for m in before.values())
    assert cli("path", "https://www.kaggle.com/models/google/text-embed/tensorFlow2/text-embed/1").code == 0
    assert list((home / "uses").iterdir())[0].name.startswith(sha1(TEXT1) + ".")
    doc = json.loads(cli("du", "--json").out)
    models = {m["handle"]: m for m in doc["models"]}
    assert models[TEXT1]["last_use"] and models[MYMUL]["last_use"] is None
    assert models[TEXT2]["pinned"] and models[TEXT1]["pinned"] is None
    # The two text-embed versions share the vocabulary (and nothing else); mymul shares nothing.
    assert models[TEXT1]["shared"] == models[TEXT2]["shared"] > 0 and models[MYMUL]["shared"] == 0
    for m in models.values():
        assert m["size"] == m["unique"] + m["shared"] and m["present"]
    assert doc["total"] == sum(m["unique"] for m in models.values()) + models[TEXT1]["shared"]
    assert doc["leftover"] == 0
    out = cli("du").out
    assert "UNIQUE" in out and "SHARED" in out and TEXT2 in out
