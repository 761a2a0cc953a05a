"""FIFOs, sockets and device nodes among the inputs are refused with a reason, never opened for
reading (a FIFO blocks its reader until someone writes: a render hung forever before any
output), and decompression bombs get the project's own one-line message."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from anomalygen.errors import ConfigError, ImageError
from anomalygen.files import open_regular, regular_file_problem, sha256_file
from anomalygen.fundus import read_image
from anomalygen.sources import find_sources, read_labels
from tests.badfiles import huge_png_header
from tests.synthetic import make_fundus, write_sources

#: Seconds a call may take before it counts as hung (they all take milliseconds).
HANG_S = 30.0

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")


def within(seconds: float, fn: Callable[[], Any], *, unblock: Path | None = None) -> Any:
    """``fn()``, failing the test (not hanging it) if it does not return within ``seconds``;
    a reader left blocked on the FIFO ``unblock`` is then released by opening it for writing."""
    box: dict[str, Any] = {}

    def call() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # handed to the test
            box["error"] = err

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if unblock is not None:
            with contextlib.suppress(OSError):
                os.close(os.open(unblock, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"hung for over {seconds:.0f} s (a FIFO was opened for reading?)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture()
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "x.jpg"
    os.mkfifo(path)
    yield path
    with contextlib.suppress(OSError):  # release a reader a failed test left waiting
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


@pytest.fixture()
def unix_socket(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "sock.png"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
    except OSError as err:  # a path too long for AF_UNIX on some systems
        pytest.skip(f"cannot make a Unix socket here ({err})")
    yield path
    server.close()


def test_open_regular_refuses_fifos_sockets_and_devices(fifo: Path, unix_socket: Path) -> None:
    for path, kind in ((fifo, "FIFO"), (unix_socket, "socket"), (Path("/dev/null"), "device")):
        assert kind in (regular_file_problem(path) or "")
        with pytest.raises(OSError, match=kind):
            within(HANG_S, lambda p=path: open_regular(p), unblock=fifo)
    with pytest.raises(OSError, match="FIFO"):
        within(HANG_S, lambda: sha256_file(fifo), unblock=fifo)
    plain = fifo.with_name("plain.bin")
    plain.write_bytes(b"abc")
    assert regular_file_problem(plain) is None
    assert sha256_file(plain).startswith("ba7816bf")  # sha256("abc")


def test_read_image_refuses_special_files_in_one_line(fifo: Path, unix_socket: Path) -> None:
    with pytest.raises(ImageError) as err:
        within(HANG_S, lambda: read_image(fifo), unblock=fifo)
    assert str(err.value) == f"{fifo}: is a FIFO (named pipe), not a regular file"
    with pytest.raises(ImageError, match="is a socket, not a regular file"):
        read_image(unix_socket)
    with pytest.raises(ImageError, match="is a character device, not a regular file"):
        read_image("/dev/zero")  # an endless file: reading it would never end either


def test_a_fifo_as_list_file_or_labels_csv_is_refused(tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    os.mkfifo(listing)
    with pytest.raises(ConfigError, match=r"list\.txt .*FIFO"):
        within(HANG_S, lambda: find_sources(listing), unblock=listing)
    labels = tmp_path / "labels.csv"
    os.mkfifo(labels)
    with pytest.raises(ConfigError, match=r"labels\.csv as CSV .*FIFO"):
        within(HANG_S, lambda: read_labels(labels), unblock=labels)


def test_render_skips_a_fifo_among_the_sources_with_its_reason(tmp_path: Path) -> None:
    from anomalygen.render import render

    src = write_sources(tmp_path / "src", count=2)
    os.mkfifo(src / "x.jpg")

    def run() -> Any:
        return render(tmp_path / "s.zarr", src, 4, size=32, shard_size=4, workers=1,
                      progress=False)  # fmt: skip

    result = within(HANG_S, run, unblock=src / "x.jpg")
    assert result.skipped == [
        {"pool": "normals", "name": "x.jpg", "reason": "is a FIFO (named pipe), not a regular file"}
    ]
    assert result.normals == 2


def test_predict_skips_a_fifo_with_its_reason(tmp_path: Path, fifo: Path) -> None:
    from resynth_models.predict import find_inputs, predict
    from tests.test_evaluate import TinyDetector

    assert [item.path for item in find_inputs([fifo])] == [fifo]  # not "no such file"
    good = tmp_path / "good.png"
    Image.fromarray(make_fundus(80, 1)).save(good)

    def run() -> Any:
        return predict(TinyDetector(), [fifo, good], tmp_path / "out", progress=False,
                       workers=1, log=lambda _: None)  # fmt: skip

    result = within(HANG_S, run, unblock=fifo)
    reason = "is a FIFO (named pipe), not a regular file"
    assert result.skipped == [{"name": "x.jpg", "reason": reason}]
    assert len(result.predictions) == 1


# ------------------------------------------------------------------------------------------
# Decompression bombs
# ------------------------------------------------------------------------------------------


def test_a_header_past_pillows_own_limit_gets_our_message(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(huge_png_header(100_000, 100_000))  # 10,000 megapixels, a few bytes
    with pytest.raises(ImageError) as err:
        read_image(path)
    message = str(err.value)
    assert message == (
        f"{path}: image too large (10000 megapixels, limit 150); refused before decoding "
        "(a decompression bomb?)"
    )
    assert "DOS attack" not in message and "Pillow" not in message


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def test_a_text_chunk_bomb_gets_our_message(tmp_path: Path) -> None:
    """A small valid PNG whose zTXt chunk inflates to 64 MB from 64 KB."""
    buffer = tmp_path / "small.png"
    Image.fromarray(make_fundus(32)).save(buffer)
    data = buffer.read_bytes()
    bomb = png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"\0" * (64 << 20), 9))
    iend = data.rindex(b"IEND") - 4
    path = tmp_path / "text_bomb.png"
    path.write_bytes(data[:iend] + bomb + data[iend:])
    with pytest.raises(ImageError) as err:
        read_image(path)
    message = str(err.value)
    assert message.startswith(f"{path}: refused: its metadata chunks decompress to more than")
    assert "decompression bomb" in message
    assert "PngImagePlugin" not in message and "\n" not in message
