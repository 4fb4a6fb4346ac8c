"""Members a sink marks `verified_only` reach it only chunk by verified chunk."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from bundler.bundle.index import FileEntry, Index
from bundler.bundle.policy import TrustPolicy
from bundler.bundle.reader import read_bundle
from bundler.errors import BundleError

from conftest import Keys

TARGET = "models/tiny/model.safetensors"


class Recorder:
    """Records what it is handed; wants verified delivery for one member."""

    def __init__(self) -> None:
        self.data: dict[str, bytearray] = {}
        self.closed: list[str] = []
        self.committed = self.aborted = False
        self._current: dict[int, str] = {}

    def verified_only(self, entry: FileEntry) -> bool:
        return entry.path == TARGET

    def begin(self, index: Index, *args: object) -> None:
        pass

    def open_member(self, entry: FileEntry) -> None:
        import threading

        self._current[threading.get_ident()] = entry.path
        self.data[entry.path] = bytearray()

    def write(self, data: memoryview) -> None:
        import threading

        self.data[self._current[threading.get_ident()]] += data

    def close_member(self, entry: FileEntry) -> None:
        self.closed.append(entry.path)

    def commit(self) -> None:
        self.committed = True

    def abort(self) -> None:
        self.aborted = True


def test_verified_delivery_passes_every_byte_in_order(bundle: Path, key: Keys) -> None:
    sink = Recorder()
    read_bundle(str(bundle), TrustPolicy(key.trust()), sink)
    with tarfile.open(bundle) as tf:
        for m in tf.getmembers():
            if not m.name.startswith("airgap/"):
                assert bytes(sink.data[m.name]) == tf.extractfile(m).read()  # type: ignore[union-attr]
    assert sink.committed and TARGET in sink.closed


@pytest.mark.parametrize("stdin", [False, True])
def test_a_damaged_chunk_is_never_delivered(
    tmp_path: Path, bundle: Path, key: Keys, stdin: bool
) -> None:
    with tarfile.open(bundle) as tf:
        m = tf.getmember(TARGET)
        original = tf.extractfile(m).read()  # type: ignore[union-attr]
    data = bytearray(bundle.read_bytes())
    data[m.offset_data + 3 * 65536 + 10] ^= 0xFF  # inside chunk 3 (64 KiB chunks)
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    sink = Recorder()
    with pytest.raises(BundleError, match="chunk 3"):
        if stdin:
            with open(bad, "rb", buffering=0) as f:
                read_bundle("-", TrustPolicy(key.trust()), sink, stdin=f)
        else:
            read_bundle(str(bad), TrustPolicy(key.trust()), sink)
    delivered = bytes(sink.data.get(TARGET, b""))
    assert len(delivered) <= 3 * 65536  # chunks 0..2 at most, never chunk 3
    assert original.startswith(delivered)
    assert sink.aborted and not sink.committed
