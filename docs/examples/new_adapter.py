"""An adapter: blocking sockets, a thread per connection, on the shared driver. It only moves
bytes; the driver does everything protocol- and policy-shaped. (Posts from other threads are
seen within 0.1 s: a real adapter wakes its thread at once, see adapters/sync.py.)"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable

from meetstream_live.adapters import (
    ConnectionDriver,
    Connections,
    HandlerFactory,
    ServerOptions,
    Step,
)

Posted = Callable[[ConnectionDriver], Step]


def serve_one(sock: socket.socket, factory: HandlerFactory, connections: Connections) -> None:
    posted: queue.SimpleQueue[Posted] = queue.SimpleQueue()  # rule 5: fn(driver), any thread
    driver = ConnectionDriver(connections.options, factory, peer=str(sock.getpeername()),
                              post=posted.put, overloaded=connections.overloaded())
    connections.add(driver, posted.put)

    def apply(step: Step) -> None:  # rules 2 and 3: write first, then the handler
        if step.out:
            sock.sendall(step.out)
        if step.events and driver.calls and (error := driver.calls.deliver(step.events)):
            apply(driver.handler_error(error))

    try:
        while not driver.closed:
            while not posted.empty():
                apply(posted.get()(driver))
            if driver.backlog.should_pause():  # rule 4: the handler is behind
                time.sleep(0.01)
                continue
            deadline = driver.seconds_to_deadline()
            sock.settimeout(0.1 if deadline is None else min(max(deadline, 0.001), 0.1))
            try:
                apply(driver.receive(sock.recv(65536)))  # b"" is EOF
            except TimeoutError:
                apply(driver.timeout())  # a no-op until the deadline is due
            except OSError:
                apply(driver.receive(b""))  # a reset is an EOF too
    finally:
        sock.close()
        connections.discard(driver)


def serve(listener: socket.socket, factory: HandlerFactory, options: ServerOptions) -> None:
    connections = Connections(options)  # rule 6: the limit (503) and the drain
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=serve_one, args=(sock, factory, connections), daemon=True).start()
