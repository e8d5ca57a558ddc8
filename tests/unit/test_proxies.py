"""Which proxy a URL goes through: the variables as curl reads them, NO_PROXY, the explicit key, loopback."""

from __future__ import annotations

import pytest

from studio_watch.studio.proxies import Proxies, ProxyUnusable, parse

ENV = {"HTTPS_PROXY": "http://proxy.campus.edu:3128", "HTTP_PROXY": "http://plain.campus.edu:8080",
       "NO_PROXY": "intranet.campus.edu, .lan,10.0.0.0/8,[fd00::1],printer:631"}


def via(proxies: Proxies, scheme: str, host: str) -> str | None:
    proxy = proxies.for_url(scheme, host)
    return None if proxy is None else f"{proxy.url} {proxy.source}"


@pytest.mark.parametrize("scheme, host, expected", [
    ("https", "myschool.instructuremedia.com", "http://proxy.campus.edu:3128 HTTPS_PROXY"),
    ("http", "hooks.example.org", "http://plain.campus.edu:8080 HTTP_PROXY"),
    ("https", "intranet.campus.edu", None),
    ("https", "a.b.intranet.campus.edu", None),  # a name covers its subdomains
    ("https", "notintranet.campus.edu", "http://proxy.campus.edu:3128 HTTPS_PROXY"),  # but not a suffix of a label
    ("https", "nas.lan", None),
    ("https", "10.20.30.40", None),
    ("https", "11.0.0.1", "http://proxy.campus.edu:3128 HTTPS_PROXY"),
    ("https", "[fd00::1]", None),
    ("https", "printer", None),
    ("https", "127.0.0.1", None), ("https", "localhost", None), ("https", "::1", None),  # loopback, always
])
def test_environment(scheme: str, host: str, expected: str | None) -> None:
    assert via(Proxies(None, ENV), scheme, host) == expected


def test_lower_case_wins_all_proxy_is_the_fallback_and_star_bypasses_everything() -> None:
    assert via(Proxies(None, {"https_proxy": "http://low:1", "HTTPS_PROXY": "http://up:2"}), "https", "x.edu") \
        == "http://low:1 https_proxy"
    assert via(Proxies(None, {"ALL_PROXY": "proxy.edu:3128"}), "https", "x.edu") == "http://proxy.edu:3128 ALL_PROXY"
    assert via(Proxies(None, {"ALL_PROXY": "http://p:1", "NO_PROXY": "*"}), "https", "x.edu") is None
    assert via(Proxies(None, {}), "https", "x.edu") is None


def test_the_explicit_proxy_wins_and_no_proxy_still_applies() -> None:
    explicit = parse("https://proxy.campus.edu", "studio.proxy")
    proxies = Proxies(explicit, {"HTTPS_PROXY": "http://other:1", "NO_PROXY": "campus.edu"})
    assert via(proxies, "https", "studio.example.com") == "https://proxy.campus.edu:443 studio.proxy"
    assert via(proxies, "https", "media.campus.edu") is None
    assert proxies.describe("https://studio.example.com/x") == \
        "through proxy https://proxy.campus.edu:443 (from studio.proxy)"


def test_credentials_in_a_variable_are_used_but_never_shown() -> None:
    proxy = parse("http://av%40campus:pa%3Ass@proxy.campus.edu:3128", "HTTPS_PROXY")
    assert proxy.auth == (b"av@campus", b"pa:ss")
    assert "pa:ss" not in str(proxy) + repr(proxy) and "pa%3Ass" not in str(proxy) + repr(proxy)


def test_a_variable_that_cannot_be_used_is_named_when_it_would_apply() -> None:
    proxies = Proxies(None, {"HTTPS_PROXY": "socks5://proxy:1080"})
    with pytest.raises(ProxyUnusable, match="HTTPS_PROXY: expected http://host:port"):
        proxies.for_url("https", "studio.example.com")
    assert proxies.for_url("http", "studio.example.com") is None  # only https was set
    assert proxies.describe("https://studio.example.com").startswith("nowhere: HTTPS_PROXY")
