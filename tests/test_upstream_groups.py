"""Upstream groups with failover (issue 12): the pure plan of which upstream to try, in which order,
and a real node daemon that remembers a dead upstream."""

from __future__ import annotations

import random
import signal
from pathlib import Path

from cachemgr.fetch.upstream_groups import FIRST_BACKOFF, MAX_BACKOFF, Attempt, Failover
from cachemgr.settings import UpstreamGroup, load_settings
from tests.support.cli import Cli
from tests.support.daemons import Daemon, free_port
from tests.support.env import BASE_ENV

A, B, C, D = (f"http://{h}:8470" for h in "abcd")
SQUID = "http://squid:3128"


def urls(plan: list[Attempt]) -> list[str]:
    return [a.url for a in plan]


def groups_from_env(spec: str) -> tuple[UpstreamGroup, ...]:
    return load_settings({"CACHEMGR_UPSTREAMS": spec, "HOME": "/nonexistent"}).upstreams


def test_groups_in_order_members_at_random() -> None:
    groups = groups_from_env(f"{A}|{B};{C}|{D}")
    seen = set()
    for seed in range(40):
        plan = urls(Failover(random.Random(seed)).plan(groups, None, 0.0))
        assert set(plan[:2]) == {A, B} and set(plan[2:]) == {C, D}, plan
        seen.add(tuple(plan))
    assert len(seen) == 4, f"every order within the groups should occur over 40 seeds, saw {seen}"
    # Seeded: the same order again.
    assert Failover(random.Random(7)).plan(groups, None, 0.0) == Failover(random.Random(7)).plan(groups, None, 0.0)


def test_a_group_s_proxy_wins_over_the_default() -> None:
    groups = (UpstreamGroup((A,), proxy=SQUID), UpstreamGroup((B,)))
    plan = Failover(random.Random(1)).plan(groups, "http://default:3128", 0.0)
    assert plan == [Attempt(A, SQUID, 0), Attempt(B, "http://default:3128", 1)]
    assert [a.proxy for a in Failover().plan(groups, None, 0.0)] == [SQUID, None]
    assert "through http://squid:3128" in plan[0].describe() and "group 1" in plan[0].describe()


def test_a_proxy_password_never_reaches_a_log_line() -> None:
    secret = Attempt(A, "http://site:s3cret@squid:3128", 0).describe()
    assert "s3cret" not in secret and "through http://site:***@squid:3128" in secret, secret
    assert Attempt("http://u:pw@a:8470", None, 1).describe() == "http://u:***@a:8470 (group 2)"


def test_no_proxy_hosts_bypass_the_default_proxy_but_not_a_groups_own() -> None:
    settings = load_settings({"CACHEMGR_UPSTREAMS": f"{A};{B};http://x.site.internal:8470", "HOME": "/nonexistent",
                              "HTTP_PROXY": "http://default:3128", "NO_PROXY": "b,.site.internal"})
    assert settings.no_proxy == ("b", ".site.internal")
    plan = Failover(random.Random(1)).plan(settings.upstreams, settings.proxy, 0.0, settings.no_proxy)
    assert [a.proxy for a in plan] == ["http://default:3128", None, None]
    own = (UpstreamGroup((B,), proxy=SQUID),)
    assert [a.proxy for a in Failover().plan(own, settings.proxy, 0.0, settings.no_proxy)] == [SQUID]


def test_a_dead_upstream_is_skipped_for_a_doubling_backoff_then_tried_again() -> None:
    groups = groups_from_env(f"{A}|{B};{C}")
    failover = Failover(random.Random(3))
    assert failover.failed(A, 100.0) == FIRST_BACKOFF
    assert urls(failover.plan(groups, None, 100.0)) == [B, C]
    assert urls(failover.plan(groups, None, 100.0 + FIRST_BACKOFF - 0.1)) == [B, C]
    assert A in urls(failover.plan(groups, None, 100.0 + FIRST_BACKOFF))  # retried later
    assert failover.failed(A, 200.0) == 2 * FIRST_BACKOFF  # a second failure in a row: twice as long
    assert all(failover.failed(A, 300.0) <= MAX_BACKOFF for _ in range(50))
    assert failover.failed(A, 300.0) == MAX_BACKOFF
    assert failover.succeeded(A) and not failover.succeeded(A)  # back, and its failures forgotten
    assert failover.failed(A, 400.0) == FIRST_BACKOFF


def test_when_every_upstream_is_dead_all_are_tried_in_group_order() -> None:
    groups = groups_from_env(f"{A};{B}|{C}")
    failover = Failover(random.Random(5))
    for url in (A, B, C):
        failover.failed(url, 0.0)
    plan = urls(failover.plan(groups, None, 1.0))
    assert plan[0] == A and set(plan[1:]) == {B, C}
    failover.succeeded(C)
    assert urls(failover.plan(groups, None, 1.0)) == [C]


def test_toml_groups_and_plain_lists_plan_alike(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'upstreams = [["{A}", "{B}"], {{urls = ["{C}"], proxy = "{SQUID}"}}]\n')
    settings = load_settings({"HOME": "/nonexistent"}, config)
    plan = Failover(random.Random(0)).plan(settings.upstreams, settings.proxy, 0.0)
    assert set(urls(plan[:2])) == {A, B} and plan[2] == Attempt(C, SQUID, 1)


def test_a_daemon_remembers_a_dead_upstream_from_one_fetch_to_the_next(cli: Cli, tmp_path: Path) -> None:
    """A real node daemon: a dead first group costs one refused connection, then is skipped."""
    mymul, text = "https://tfhub.dev/google/mymul/1", "https://tfhub.dev/google/text-embed/1"
    assert cli("pull", mymul, text).code == 0  # the site's store (the fake origin behind it)
    site = Daemon(cli.home, cli.env, listen=f"127.0.0.1:{free_port()}")
    dead = f"http://127.0.0.1:{free_port()}"
    env = {**BASE_ENV, "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "CACHEMGR_UPSTREAMS": f"{dead};{site.base}",
           "CACHEMGR_MIRRORS": f"https://tfhub.dev/={dead}/", "CACHEMGR_RETRIES": "0"}
    node = Daemon(tmp_path / "node", env)
    try:
        site.wait_ready(60)
        node.wait_ready(60)
        for handle in (mymul, text):
            code, doc = node.call("POST", "/v1/resolve", {"handle": handle})
            assert code == 200 and doc["fetched"], doc
        plans = [line for line in node.output().splitlines() if "upstreams for " in line]
        assert len(plans) == 2 and dead in plans[0] and dead not in plans[1], plans
        assert node.output().count(f"upstream {dead} failed") == 1, node.output()[-3000:]
    finally:
        node.stop(signal.SIGKILL)
        site.stop(signal.SIGKILL)
