"""Fuzzing handle parsing (``parse_handle``): arbitrary text and URL-like strings give a Handle or
a HandleError; a Handle's canonical form parses to itself, and every alias parses to it.

Everything runs in-process, under the hypothesis profiles of tests/support/fuzz.py (``ci`` by
default, bounded; ``long`` with ``--hypothesis-profile=long`` or ``CACHEMGR_FUZZ_PROFILE=long``).
Failing examples print a reproduction blob (``@reproduce_failure``).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cachemgr.errors import HandleError
from cachemgr.handles import Handle, parse_handle
from tests.support.fuzz import fuzz

# == handles =======================================================================================
handle_chars = st.one_of(
    st.characters(codec="utf-8"),
    st.sampled_from(list("/:?#[]@%&=+.-_ \t\n\r\x00\\") + ["\uff03", "\uff0f", "\u2100", "\u0130", "K"]),
)
handle_text = st.text(handle_chars, max_size=40)
names_re = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,8}", fullmatch=True)
segment = st.one_of(st.sampled_from(["google", "nnlm-en-dim128", "2", "007", "models", "frameworks", "variations",
                                     "versions", "TensorFlow2", "default", "a.b", "-x", ".x", "", "..", "1\n",
                                     "x\n", "%2F", "é"]),
                    names_re, names_re.map(lambda t: t + "\n"), st.from_regex(r"[0-9]{1,3}\n?", fullmatch=True),
                    handle_text)
hosts = st.one_of(st.sampled_from(["tfhub.dev", "www.tfhub.dev", "TFHUB.DEV", "kaggle.com", "www.kaggle.com",
                                   "hub.tensorflow.google.cn", "example.org", "[::1]", "[::1", "::1]", "[v1.x]",
                                   "127.0.0.1", "h:8080", "h:0", "h:99999", "h:abc", "h:", "u:p@h", "@h", "",
                                   "xn--nxasmq6b", "\uff03h", "tfhub.dev."]), handle_text)


@st.composite
def url_like(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["https://", "http://", "HTTP://", "ftp://", "", "", "//", "https:/"]))
    segs = draw(st.lists(segment, max_size=9))
    query = draw(st.one_of(st.just(""), st.sampled_from(["?tf-hub-format=compressed", "?a=1&b=", "?a=%zz&a=1",
                                                          "?", "?x=1;y=2", "?tf%2Dhub-format=x"]),
                           handle_text.map(lambda t: "?" + t)))
    frag = draw(st.one_of(st.just(""), handle_text.map(lambda t: "#" + t)))
    slash = draw(st.sampled_from(["", "/", "//"]))
    pad = draw(st.sampled_from(["", " ", "\t", "\n "]))
    if not scheme and draw(st.booleans()):  # kagglehub-like: segments only, usually five
        segs = draw(st.lists(segment, min_size=4, max_size=6))
        if draw(st.booleans()):  # well-formed, but one segment may end in a control character
            version = draw(st.from_regex(r"[0-9]{1,3}", fullmatch=True))
            segs = [*draw(st.lists(names_re, min_size=4, max_size=4)), version]
            i = draw(st.integers(0, 4))
            segs[i] += draw(st.sampled_from(["", "\n", "\r", "\t", " ", "\x00", "\x0b"]))
        return pad + "/".join(segs) + slash + pad
    return pad + scheme + draw(hosts) + "/" + "/".join(segs) + slash + query + frag + pad


def check_handle(text: str) -> None:
    try:
        handle = parse_handle(text)
    except HandleError:
        return
    assert isinstance(handle, Handle)
    again = parse_handle(handle.canonical)  # the canonical form is a handle: no HandleError here
    assert again.canonical == handle.canonical and again.kind == handle.kind
    assert parse_handle(again.canonical) == again
    for alias in handle.aliases():
        assert parse_handle(alias).canonical == handle.canonical, f"alias {alias!r} names another model"


@given(text=handle_text)
@fuzz(1000)
def test_parse_handle_arbitrary_text(text: str) -> None:
    check_handle(text)


@given(text=url_like())
@fuzz(1000)
def test_parse_handle_url_like(text: str) -> None:
    check_handle(text)


def test_handle_strategies_reach_every_kind() -> None:
    """Hand-picked members of the strategies' space parse to each kind (the property is not vacuous)."""
    kinds = {parse_handle(t).kind for t in ("https://tfhub.dev/google/nnlm-en-dim128/2",
                                            "o/m/TensorFlow2/default/1", "https://hub.tensorflow.google.cn/g/m/1",
                                            "http://example.org/a?a=1&b=")}
    assert kinds == {"tfhub", "kaggle", "tfhub_cn", "http"}
