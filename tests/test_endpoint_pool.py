"""EndpointPool's rules without the SDK or a server: least-loaded choice, ejection after
consecutive failures and its doubling backoff, one probe at a time and re-admission, affinity that
holds while its endpoint is healthy and moves with an ejection. A fake clock stands in for time."""

from __future__ import annotations

import pytest

from hpl_data.policies.endpoints import EjectionPolicy, EndpointPool


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pool(n: int = 2, after: int = 2, first_s: float = 10.0, max_s: float = 35.0, **kw) -> tuple[EndpointPool, Clock]:
    clock = Clock()
    return EndpointPool([f"http://h{i}/v1" for i in range(n)], EjectionPolicy(after, first_s, max_s),
                        clock=clock, **kw), clock


def fail(p: EndpointPool, ep, times: int = 1) -> None:
    for _ in range(times):
        with p.sending(ep):
            p.failed(ep)


def test_least_loaded_then_fewest_sent():
    p, _ = pool(3)
    a, b, c = p.endpoints
    with p.sending(a), p.sending(b):
        assert p.pick() is c  # the only one with nothing outstanding
        with p.sending(c), p.sending(c):
            assert p.pick() in (a, b) and p.pick() is a  # a and b: 1 outstanding, 1 sent; a is first
    assert p.pick() is a  # none outstanding, all sent once except c (twice): a first among the ties
    with p.sending(a):
        pass
    assert p.pick() is b and [e.outstanding for e in p.endpoints] == [0, 0, 0]


def test_ejection_after_consecutive_failures_only():
    p, _ = pool(2, after=3)
    a, _b = p.endpoints
    fail(p, a, 2)
    p.answered(a)  # an answer between failures resets the run
    fail(p, a, 2)
    assert a.healthy and a.errors == 4 and a.ejections == 0
    fail(p, a)
    assert not a.healthy and a.ejections == 1 and a.stats() == {"calls": 5, "errors": 5, "ejections": 1,
                                                                "recoveries": 0}


def test_an_ejected_endpoint_gets_one_probe_when_due_and_its_backoff_doubles_up_to_the_cap():
    p, clock = pool(2, after=1, first_s=10.0, max_s=35.0)
    a, b = p.endpoints
    fail(p, a)
    assert a.ejected_until == 110.0
    assert [p.pick() for _ in range(3)] == [b, b, b]
    clock.now = 110.0
    assert p.pick() is a  # due: the probe goes to it even though b is idle
    with p.sending(a):
        assert p.pick() is b  # one probe at a time
        p.failed(a)  # the probe failed: ejected again, twice as long
    assert (a.ejected_until, a.ejections) == (130.0, 2)
    fail(p, a)  # a failure before it is due does not extend the ejection
    assert (a.ejected_until, a.ejections) == (130.0, 2)
    for expected in (165.0, 200.0):  # 40 s, capped at 35 s
        clock.now = a.ejected_until
        fail(p, a)
        assert a.ejected_until == expected
    clock.now = a.ejected_until
    assert p.pick() is a
    p.answered(a)
    assert a.healthy and a.recoveries == 1 and a.eject_s == 0.0
    fail(p, a)  # back to the first backoff after a recovery
    assert a.ejected_until == clock.now + 10.0


def test_all_ejected_picks_the_one_due_first():
    p, clock = pool(3, after=1)
    a, b, c = p.endpoints
    fail(p, b)
    clock.now += 1
    fail(p, a)
    clock.now += 1
    fail(p, c)
    assert p.pick() is b  # none due yet: the earliest, so a call waits the least for a probe


def test_affinity_is_stable_while_healthy_and_moves_with_an_ejection():
    p, clock = pool(2, after=1)
    a, b = p.endpoints
    first = p.pick("task-1")
    other = b if first is a else a
    with p.sending(first), p.sending(first), p.sending(first):
        assert p.pick("task-1") is first  # load does not split a key
        assert p.pick("task-2") is other
    assert [p.pick(f"task-{i % 2 + 1}") for i in range(6)] == [first, other] * 3
    fail(p, first)
    assert p.pick("task-1") is other  # moved with the ejection
    clock.now += 1000
    assert p.pick() is first  # probe (no key)
    p.answered(first)
    assert p.pick("task-1") is other  # and stays moved after the recovery


def test_affinity_memory_forgets_the_least_recently_used_key():
    p, _ = pool(2, affinity_memory=2)
    a, b = p.endpoints
    assert p.pick("k1") is a
    with p.sending(a):
        assert p.pick("k2") is b
    p.pick("k1")  # k1 used again: k2 is now the oldest
    with p.sending(a):
        assert p.pick("k3") is b
    with p.sending(b), p.sending(b):
        assert p.pick("k1") is a and p.pick("k3") is b  # remembered
        assert p.pick("k2") is a  # forgotten: the least loaded


def test_fail_over_tries_every_healthy_endpoint_once_before_backing_off():
    p, _ = pool(3, after=5)
    tried: set = set()
    seen = []
    for _ in range(3):
        ep = p.pick(None, tried)
        seen.append(ep)
        fail(p, ep)
        again_at_once = p.fail_over(ep, tried)
    assert sorted(e.url for e in seen) == p.urls and not again_at_once and tried == set()
    a, b, c = p.endpoints
    fail(p, b, 4)  # b ejected
    tried = {a}
    assert p.fail_over(a, tried)  # c is healthy and untried
    assert not p.fail_over(c, tried) and tried == set()  # b is out: back off


def test_bad_configurations_are_one_line_errors():
    with pytest.raises(ValueError, match="no endpoint URL"):
        EndpointPool([])
    with pytest.raises(ValueError, match="listed twice"):
        EndpointPool(["http://h/v1", "http://h/v1"])
    for bad in [(0, 1.0, 2.0), (1, 0.0, 2.0), (1, 3.0, 2.0)]:
        with pytest.raises(ValueError, match="eject_after must be >= 1"):
            EjectionPolicy(*bad)
