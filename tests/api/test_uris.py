"""The one storage URI parser: canonical forms, refusals, prefix containment."""

from __future__ import annotations

import pytest

from saeops.api.uris import URIError, check_endpoint_url, parse_storage_uri


@pytest.mark.parametrize(("uri", "canonical"), [
    ("s3://bucket/runs/a", "s3://bucket/runs/a"),
    ("s3://bucket/runs/a/", "s3://bucket/runs/a"),
    ("s3://bucket", "s3://bucket"),
    ("s3://bucket/", "s3://bucket"),
    ("file:///data/run", "file:///data/run"),
    ("file://localhost/data/run/", "file:///data/run"),
    ("/data/run", "file:///data/run"),
    ("runs/quickstart", "runs/quickstart"),
])
def test_canonical_forms(uri, canonical):
    assert str(parse_storage_uri(uri)) == canonical


@pytest.mark.parametrize("uri", [
    "", " ", "file:relative", "file://host/x", "file://", "~root/x", "~/x", "../../x", "runs/../x",
    "s3://", "s3:///p", "s3://b/a/../b", "s3://Bad_Bucket/x", "s3://b..c/x", "s3://ab/x//y",
    "gs://bucket/x", "http://example.com/x", "c:relative", "/data/./x", "a\\b", "s3://bucket/x\n",
])
def test_refused(uri):
    with pytest.raises(URIError):
        parse_storage_uri(uri)


def test_relative_refused_for_pods():
    with pytest.raises(URIError, match="mounted volume"):
        parse_storage_uri("runs/x", allow_relative=False)
    assert str(parse_storage_uri("/mnt/runs/x", allow_relative=False)) == "file:///mnt/runs/x"


def test_is_within_whole_segments():
    team = parse_storage_uri("s3://shared/teams/a")
    assert parse_storage_uri("s3://shared/teams/a/run1").is_within(team)
    assert parse_storage_uri("s3://shared/teams/a").is_within(team)
    assert not parse_storage_uri("s3://shared/teams/ab/run1").is_within(team)
    assert not parse_storage_uri("s3://other/teams/a/run1").is_within(team)
    assert not parse_storage_uri("file:///teams/a/run1").is_within(team)
    assert parse_storage_uri("s3://shared/x").is_within(parse_storage_uri("s3://shared"))


def test_child():
    base = parse_storage_uri("s3://bkt/runs")
    assert str(base.child("trial-1/checkpoints")) == "s3://bkt/runs/trial-1/checkpoints"
    assert str(parse_storage_uri("s3://bkt").child("x")) == "s3://bkt/x"
    assert str(parse_storage_uri("/data").child("x")) == "file:///data/x"
    with pytest.raises(URIError):
        base.child("../other")


@pytest.mark.parametrize("url", ["file://", "ftp://h", "http://", "https://user:pw@h", "h:9000"])
def test_endpoint_refused(url):
    with pytest.raises(URIError):
        check_endpoint_url(url)


def test_endpoint_ok():
    assert check_endpoint_url("http://127.0.0.1:9000") == "http://127.0.0.1:9000"


@pytest.mark.parametrize("uri", ["//", "///a", "/a//", "s3://bkt//", "s3://bkt/a//", "file:////a", ".//a", "a//"])
def test_runs_of_slashes_are_refused_anywhere(uri):
    with pytest.raises(URIError, match="empty segment"):
        parse_storage_uri(uri)


@pytest.mark.parametrize("uri", ["runs/\x01x", "/a/\x7fb", "s3://bkt/a\x85"[:-1] + "\x1b", "/a\n"])
def test_control_characters_are_refused(uri):
    with pytest.raises(URIError, match="control characters"):
        parse_storage_uri(uri)


def test_a_leading_dot_slash_is_the_same_relative_path():
    assert parse_storage_uri("./runs/x") == parse_storage_uri("runs/x")
    with pytest.raises(URIError):
        parse_storage_uri("runs/./x")
