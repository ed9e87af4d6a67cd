"""Bounded URL downloads (`deepstack_hf.media_fetch`) against a real HTTP server on loopback."""

import time

import pytest

from deepstack_hf.media_fetch import FetchLimits, MediaFetchError, fetch_url
from loopback_media_server import BODY, serving


@pytest.fixture(scope="module")
def server_url():
    with serving() as url:
        yield url


def test_downloads_the_body(server_url):
    assert fetch_url(f"{server_url}/body") == BODY
    assert fetch_url(f"{server_url}/no-length") == BODY


def test_a_trickling_body_stops_at_the_total_deadline(server_url):
    start = time.monotonic()
    with pytest.raises(MediaFetchError, match="deadline"):
        fetch_url(f"{server_url}/trickle", FetchLimits(deadline_s=1.0))
    assert time.monotonic() - start < 3.0  # each byte arrives well within a read timeout; only the deadline stops it


@pytest.mark.parametrize("path", ["/body", "/no-length"])
def test_a_body_over_the_byte_limit_is_refused(server_url, path):
    with pytest.raises(MediaFetchError, match="limit of 1000"):
        fetch_url(f"{server_url}{path}", FetchLimits(max_bytes=1000))


def test_redirects_follow_the_limits(server_url):
    assert fetch_url(f"{server_url}/redirect") == BODY
    with pytest.raises(MediaFetchError, match="redirect"):
        fetch_url(f"{server_url}/redirect", FetchLimits(follow_redirects=False))
    with pytest.raises(MediaFetchError, match="elsewhere.invalid"):
        fetch_url(f"{server_url}/redirect-away", FetchLimits(allowed_domains=("127.0.0.1",)))


def test_allowed_domains_and_schemes():
    with pytest.raises(MediaFetchError, match="not among the allowed"):
        fetch_url("http://127.0.0.1:1/x", FetchLimits(allowed_domains=("example.com",)))
    with pytest.raises(MediaFetchError, match="Only http"):
        fetch_url("file:///etc/passwd")
    # a subdomain is allowed by its parent domain, a look-alike is not
    from deepstack_hf.media_fetch import check_url_allowed

    check_url_allowed("https://img.example.com/a.png", FetchLimits(allowed_domains=("example.com",)))
    with pytest.raises(MediaFetchError):
        check_url_allowed("https://badexample.com/a.png", FetchLimits(allowed_domains=("example.com",)))


def test_errors_name_the_status_and_cut_long_urls(server_url):
    with pytest.raises(MediaFetchError, match="HTTP 404"):
        fetch_url(f"{server_url}/missing")
    long_url = f"{server_url}/" + "a" * 5000
    with pytest.raises(MediaFetchError) as error:
        fetch_url(long_url)
    assert len(str(error.value)) < 300


def test_limits_are_validated():
    with pytest.raises(ValueError, match="deadline_s"):
        FetchLimits(deadline_s=0)
    with pytest.raises(ValueError, match="max_bytes"):
        FetchLimits(max_bytes=-1)
