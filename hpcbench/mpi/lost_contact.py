"""Rank 0 tells the other ranks that it has lost contact with one of them, and can see whether
one is still there.

When a host is lost, a rank on a surviving host may be waiting on rank 0 in a collective (its
neighbour in a ring), not on a lost rank: it meets no error of its own while rank 0 lives, and
rank 0, waiting for the records of the failed ranks (failures.failure_line), would name it
missing. Rank 0 cannot close its connections to make it fail: gloo closes them only when the last
reference to the group goes, and the error's traceback holds one. So every other rank listens on
a TCP port of its own, in a thread; rank 0 connects to each and says so, and each records itself
as a survivor. The word carries a secret of the run (rank 0 draws it, MPI hands it to the others):
on a multi-node run the ports listen on a routable address, and nobody else on the cluster's
network may make a healthy rank write a failure record. Plain sockets, not a second torch.distributed store: a thread inside the store's
C++ code when its server goes away prints a C++ stack, and when the interpreter exits meanwhile,
aborts the process (a completed run then fails).

The same ports tell rank 0 whether a rank it waits for outside any collective (while the ranks
build their data) still lives: a live rank's port accepts (the kernel accepts while the rank is
busy), a dead rank's refuses, a lost host's does not answer.
"""
from __future__ import annotations

import hmac
import logging
import secrets
import socket
import threading
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from hpcbench.errors import ConfigError
from hpcbench.mpi.topology import Topology, allgather, bcast, this_host_address

log = logging.getLogger("hpcbench")

Address = Tuple[str, int]

_WORD = b"hpcbench: lost contact "
CONNECT_TIMEOUT_S = 2.0  # per rank; a lost host does not answer at all
JOIN_S = 5.0


class Listener:
    """A rank other than 0: calls `then` once rank 0's message arrives, until closed."""

    def __init__(self, host: str, then: Callable[[], None], secret: str):
        self._socket = socket.create_server((host, 0))
        self.address: Address = (host, self._socket.getsockname()[1])
        self._then = then
        self._message = _message(secret)
        self._thread = threading.Thread(target=self._listen, name="hpcbench-lost-contact", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:  # closed: the rank is ending
                return
            with connection:
                connection.settimeout(CONNECT_TIMEOUT_S)
                try:
                    told = hmac.compare_digest(_receive(connection, len(self._message)), self._message)
                except OSError:
                    told = False
            if told:  # anything else (a port scanner, a guess) is ignored
                self._then()
                return

    def close(self) -> None:
        try:
            self._socket.shutdown(socket.SHUT_RDWR)  # wakes accept(), where close() alone may not
        except OSError:
            pass
        self._socket.close()
        self._thread.join(JOIN_S)


def _message(secret: str) -> bytes:
    return _WORD + secret.encode() + b"\n"


def _receive(connection: socket.socket, size: int) -> bytes:
    """Up to `size` bytes, however the sender's segments arrive (until it closes or times out)."""
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


_listener: Optional[Listener] = None  # ranks other than 0
_others: Dict[int, Address] = {}  # rank 0: where each other rank listens
_secret = ""  # rank 0: the run's secret, which its word carries


def listen(topology: Topology, then: Callable[[], None]) -> None:
    """Every rank, together (two MPI collectives): rank 0 draws the run's secret and hands it to the
    others, which start listening; rank 0 learns where."""
    global _listener, _others, _secret
    secret = bcast(secrets.token_hex(16) if topology.is_main else None)
    if not topology.is_main:
        try:
            _listener = Listener(this_host_address(topology.nodes), then, secret)
        except (ConfigError, OSError) as error:  # the run goes on; only this rank's survivor record is lost
            log.warning("rank %d cannot listen for rank 0's word of a lost rank: %s", topology.rank, error)
    addresses = allgather(_listener.address if _listener else None)
    if topology.is_main:
        _others, _secret = {rank: address for rank, address in enumerate(addresses) if address}, secret


def tell_the_others() -> None:
    """Rank 0: say it to every other rank (after listen)."""
    tell(list(_others.values()), _secret)


def unreachable(ranks: Iterable[int]) -> List[int]:
    """Rank 0: those of `ranks` whose port refuses or does not answer (after listen; a rank that
    could not listen is never named)."""
    found: List[int] = []

    def probe(rank: int) -> None:
        try:
            socket.create_connection(_others[rank], timeout=CONNECT_TIMEOUT_S).close()
        except OSError:
            found.append(rank)

    threads = [threading.Thread(target=probe, args=(rank,), daemon=True) for rank in ranks if rank in _others]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(CONNECT_TIMEOUT_S + 1)
    return sorted(found)


def tell(addresses: List[Address], secret: str) -> None:
    """Say it to every listener at once, waiting at most CONNECT_TIMEOUT_S (a lost rank's host
    does not answer; a lost rank's port refuses)."""
    threads = [threading.Thread(target=_tell, args=(address, _message(secret)), daemon=True) for address in addresses]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(CONNECT_TIMEOUT_S + 1)


def _tell(address: Address, message: bytes) -> None:
    try:
        with socket.create_connection(address, timeout=CONNECT_TIMEOUT_S) as connection:
            connection.sendall(message)
    except OSError:
        pass


def stop_listening() -> None:
    global _listener, _others, _secret
    if _listener is not None:
        _listener.close()
    _listener, _others, _secret = None, {}, ""
