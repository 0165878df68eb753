"""reuseport.py on the real kernel: the SK_REUSEPORT program spreads connections over
a reuseport group's listeners in turn, skips the listeners marked as serving
streams while another is not, and an empty slot (a listener gone) leaves the
choice to the kernel's hash instead of refusing the connection."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest
from conftest import require_root

from agentd.api import reuseport


def _accepted(listeners: list[socket.socket]) -> list[int]:
    """Connections waiting in each listener's queue (taken)."""
    counts = []
    for listener in listeners:
        listener.setblocking(False)
        taken = 0
        while True:
            try:
                connection, _ = listener.accept()
            except BlockingIOError:
                break
            connection.close()
            taken += 1
        counts.append(taken)
    return counts


def _connect(port: int, count: int) -> None:
    for _ in range(count):
        # Completed by the kernel: the handshake needs no accept().
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def _listeners(count: int) -> tuple[list[socket.socket], int]:
    """`count` listeners in one reuseport group on a free loopback port."""
    listeners: list[socket.socket] = []
    port = 0
    for _ in range(count):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(("127.0.0.1", port))
        port = listener.getsockname()[1]
        listener.listen(64)
        listeners.append(listener)
    return listeners, port


@contextlib.contextmanager
def _group(count: int) -> Iterator[tuple[reuseport.Balancer, list[socket.socket], int]]:
    require_root()
    balancer = reuseport.Balancer.create(count)
    listeners, port = _listeners(count)
    try:
        yield balancer, listeners, port
    finally:
        for listener in listeners:
            listener.close()
        balancer.close()


@pytest.fixture
def group() -> Iterator[tuple[reuseport.Balancer, list[socket.socket], int]]:
    with _group(3) as made:
        yield made


def _placed(
    balancer: reuseport.Balancer, listeners: list[socket.socket], attach_to: int = 0
) -> None:
    """Every listener at its slot, the program attached through one of them (any
    one: the program is the group's)."""
    for slot, listener in enumerate(listeners):
        reuseport.place(balancer.sockets_fd, slot, listener.fileno())
    reuseport.attach(balancer.program_fd, listeners[attach_to].fileno())


def test_the_group_takes_connections_in_turn(group):
    balancer, listeners, port = group
    assert reuseport.listening_sockets(port) == [s.fileno() for s in listeners]
    _placed(balancer, listeners, attach_to=1)
    _connect(port, 12)
    assert _accepted(listeners) == [4, 4, 4]


def test_new_connections_go_to_the_listeners_not_streaming(group):
    balancer, listeners, port = group
    _placed(balancer, listeners)
    reuseport.mark_streaming(balancer.streaming_fd, 1, True)
    _connect(port, 12)
    assert _accepted(listeners) == [6, 0, 6]
    reuseport.mark_streaming(balancer.streaming_fd, 0, True)
    _connect(port, 5)
    assert _accepted(listeners) == [0, 0, 5]
    # Unmarked again: in turn over all three.
    reuseport.mark_streaming(balancer.streaming_fd, 1, False)
    reuseport.mark_streaming(balancer.streaming_fd, 0, False)
    _connect(port, 9)
    assert _accepted(listeners) == [3, 3, 3]


def test_when_every_listener_streams_they_take_connections_in_turn(group):
    balancer, listeners, port = group
    _placed(balancer, listeners)
    for slot in range(3):
        reuseport.mark_streaming(balancer.streaming_fd, slot, True)
    _connect(port, 12)
    assert _accepted(listeners) == [4, 4, 4]


def test_two_listeners_take_connections_in_turn_even_while_one_streams():
    """AVOID_STREAMING_FROM: with two, avoiding one would put every connection on the
    other."""
    with _group(2) as (balancer, listeners, port):
        _placed(balancer, listeners)
        reuseport.mark_streaming(balancer.streaming_fd, 0, True)
        _connect(port, 8)
        assert _accepted(listeners) == [4, 4]


def test_an_empty_slot_falls_back_to_the_kernels_hash(group):
    balancer, listeners, port = group
    # register() finds the first listener on the port; slots 1 and 2 stay empty.
    assert (
        reuseport.register(balancer.program_fd, balancer.sockets_fd, slot=0, port=port)
        == listeners[0].fileno()
    )
    _connect(port, 9)
    counts = _accepted(listeners)
    assert sum(counts) == 9  # none refused
    assert counts[0] >= 3  # its own turns at least


def test_register_without_a_listener_says_so():
    require_root()
    balancer = reuseport.Balancer.create(2)
    try:
        with pytest.raises(reuseport.BalanceUnavailable, match="no listening socket on port 1"):
            reuseport.register(balancer.program_fd, balancer.sockets_fd, slot=0, port=1)
    finally:
        balancer.close()
