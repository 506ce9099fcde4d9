"""Pure parts of the dispatcher: backoff, Retry-After, per-host admission, targets, config."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from eventledger.dispatch import DispatchConfig, DispatchEvent, RetryPolicy, parse_retry_after
from eventledger.dispatch.limits import HostLanes
from eventledger.dispatch.transport import check_literal_target, sign, target_host
from eventledger.errors import ConfigError, InputError, TargetRefusedError


def test_backoff_doubles_from_one_second_and_caps_at_sixty() -> None:
    policy = RetryPolicy(jitter=0.0)
    assert [policy.delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert policy.delay(10_000) == 60.0  # no overflow for absurd attempt numbers


def test_jitter_is_within_ten_percent_and_uses_the_given_source() -> None:
    policy = RetryPolicy()
    assert policy.delay(1, lambda: 0.0) == pytest.approx(0.9)
    assert policy.delay(1, lambda: 0.5) == pytest.approx(1.0)
    assert policy.delay(3, lambda: 0.999999) == pytest.approx(4.4, rel=1e-5)
    assert policy.delay(7, lambda: 0.0) == pytest.approx(54.0)
    rng = random.Random(7)
    delays = [policy.delay(4, rng) for _ in range(2000)]
    assert all(7.2 <= d <= 8.8 for d in delays)
    assert max(delays) - min(delays) > 1.0  # really jittered
    # The same seed gives the same delays: a pure function of (attempt, policy, source).
    assert [policy.delay(2, random.Random(3)) for _ in range(3)] == [
        policy.delay(2, random.Random(3)) for _ in range(3)
    ]


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(jitter=1.5)
    with pytest.raises(ValueError):
        RetryPolicy().delay(0)
    assert RetryPolicy().is_exhausted(5) and not RetryPolicy().is_exhausted(4)


def test_retry_after_seconds_and_http_date() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_host_lanes_admit_fifo_and_never_exceed_the_limit() -> None:
    lanes: HostLanes[int] = HostLanes(2)
    assert lanes.offer("a", 1) and lanes.offer("a", 2)
    assert not lanes.offer("a", 3) and not lanes.offer("a", 4)
    assert lanes.offer("b", 10)  # another host is not held up by a's queue
    assert lanes.admitted("a") == 2 and lanes.waiting("a") == 2
    assert lanes.load() == 5
    assert lanes.done("a") == 3  # first come, first served
    assert lanes.admitted("a") == 2
    assert lanes.drain_waiting() == [4]
    assert lanes.done("a") is None and lanes.done("a") is None
    assert lanes.admitted("a") == 0 and lanes.load() == 1


def test_a_stalled_host_counts_only_its_slots_and_gives_back_its_queue() -> None:
    lanes: HostLanes[str] = HostLanes(2)
    for i in range(5):
        lanes.offer("slow", f"s{i}", now=100.0)
    lanes.offer("fast", "f0", now=100.0)
    # Not stalled yet: everything counts, nothing is given back.
    assert lanes.load(100.4, 0.5) == 6 and lanes.trim_stalled(100.4, 0.5) == []
    # No slot of "slow" freed for more than 0.5 s: only its 2 slots count, its queue goes back.
    assert lanes.load(100.6, 0.5) == 3
    assert lanes.trim_stalled(100.6, 0.5) == ["s2", "s3", "s4"]
    assert lanes.waiting("slow") == 0 and lanes.admitted("slow") == 2
    # Progress makes it healthy again.
    assert lanes.done("slow", now=101.0) is None
    assert not lanes.stalled("slow", 101.2, 0.5)


def test_signature_matches_an_independent_computation() -> None:
    key = bytes(range(32))
    secret = "whsec_" + base64.b64encode(key).decode()
    body = b'{"a":1}'
    expected = base64.b64encode(
        hmac.new(key, b"msg_1.1700000000." + body, hashlib.sha256).digest()
    ).decode()
    assert sign(secret, "msg_1", 1700000000, body) == "v1," + expected


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://10.1.2.3/",
        "http://192.168.0.1/",
        "http://169.254.169.254/latest",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
    ],
)
def test_private_literal_targets_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(TargetRefusedError):
        check_literal_target(url, allow_private=False)
    assert check_literal_target(url, allow_private=True)


@pytest.mark.parametrize("url", ["ftp://example.test/", "file:///etc/passwd", "http:///x", "x"])
def test_non_http_targets_are_refused(url: str) -> None:
    with pytest.raises(TargetRefusedError):
        target_host(url)


def test_public_literal_and_names_pass_the_literal_check() -> None:
    assert check_literal_target("https://93.184.216.34/hook", False) == "93.184.216.34"
    assert check_literal_target("https://Hooks.Example.test/x", False) == "hooks.example.test"


def test_event_and_config_validation() -> None:
    with pytest.raises(InputError):
        DispatchEvent("", "u", 1, b"{}", "http://h/")
    with pytest.raises(InputError):
        DispatchEvent("e", "u", 0, b"{}", "http://h/")
    assert DispatchEvent("e", "u", 1, {"a": [1, 2]}, "http://h/").body() == b'{"a":[1,2]}'
    with pytest.raises(ConfigError):
        DispatchConfig(workers=0)
    with pytest.raises(ConfigError):
        DispatchConfig(lease_duration=1.0, request_timeout=5.0)
    assert DispatchConfig(workers=100).per_host_limit == 50
    assert DispatchConfig(workers=10).per_host_limit == 9


def test_dispatch_options_are_one_group_for_dispatch_and_serve() -> None:
    from eventledger.cli import build_parser
    from eventledger.dispatch import DispatchConfig
    from eventledger.dispatch.cli import dispatch_config_from_args
    from eventledger.errors import ConfigError

    parser = build_parser()
    flags = ["--workers", "7", "--max-per-host", "3", "--request-timeout", "20",
             "--max-attempts", "2", "--retry-initial", "0.5", "--allow-private-targets"]
    for command in (["dispatch"], ["serve"]):
        config = dispatch_config_from_args(parser.parse_args([*command, *flags]))
        assert (config.workers, config.max_per_host, config.request_timeout) == (7, 3, 20.0)
        assert (config.retry.max_attempts, config.retry.initial) == (2, 0.5)
        assert config.retry.maximum == DispatchConfig().retry.maximum
        assert config.allow_private_targets is True
        assert config.lease_duration >= 60.0  # outlasts a 20 s request
    defaults = dispatch_config_from_args(parser.parse_args(["dispatch"]))
    assert defaults == DispatchConfig()
    with pytest.raises(ConfigError):
        dispatch_config_from_args(parser.parse_args(["dispatch", "--max-attempts", "0"]))
