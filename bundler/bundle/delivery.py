"""The delivery thread: members a sink takes ``verified_only`` (bytes handed straight to
another program, such as an image load) reach it chunk by chunk, each only after that
chunk matched its signed hash."""

from __future__ import annotations

import queue
import threading
from typing import Any

from bundler.bundle.policy import Sink
from bundler.hashing import StreamHasher


class Delivery:
    """Hands verified chunks of ``verified_only`` members to the sink, in order."""

    def __init__(self, sink: Sink, hasher: StreamHasher) -> None:
        self.sink = sink
        self.hasher = hasher
        self.error: BaseException | None = None
        self.cancelled = False  # after a failure: drain without handing anything on
        self._q: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=3)
        self._thread = threading.Thread(target=self._run, name="deliver", daemon=True)
        self._thread.start()

    def put(self, item: tuple[Any, ...]) -> None:
        self._q.put(item)

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            kind = item[0]
            if kind == "chunk":
                _, result, held = item
                ok = self.error is None and result.wait()
                for view, buf in held:
                    if ok and not self.cancelled:
                        try:
                            self.sink.write(view)
                        except BaseException as e:
                            self.error, ok = e, False
                    del view
                    if buf is not None:
                        self.hasher.release(buf)
                held.clear()
                if not ok and self.error is None:
                    self.error = Undelivered()
            elif self.error is None and not self.cancelled:
                try:
                    if kind == "open":
                        self.sink.open_member(item[1])
                    else:
                        self.sink.close_member(item[1])
                except BaseException as e:
                    self.error = e

    def finish(self) -> None:
        """Wait until everything queued is delivered; raise the sink's error, if any."""
        self._q.put(None)
        self._thread.join()
        if self.error is not None and not isinstance(self.error, Undelivered):
            raise self.error

    def stop(self) -> None:
        self.cancelled = True
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join()


class Undelivered(Exception):
    """A chunk failed verification; the reader reports the mismatch itself."""
