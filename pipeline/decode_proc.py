"""Decode in a child process that can be killed: `decode_clip` with a deadline.

decord's `get_batch` can spin forever in native code (a container that over-reports its frame
count); no Python thread or exception can stop that. Each decode worker (a Ray task worker
process) keeps one long-lived child, `python -m pipeline.decode_proc`, and sends it one path at
a time over pipes. A decode that passes the deadline kills the child (SIGKILL) and becomes
`DecodeError("decode timed out after N s")`; the next clip starts a fresh child.

Protocol (no pickle): the child first writes {"ready": true} once its imports are done (the
deadline of a clip counts from its request to a ready child, never the child's start-up);
request = one JSON line {"path", "geometry"}; reply = one JSON header line
{"ok", "error" | clip fields + "shape"} followed, for an ok clip, by the raw uint8 frames.

Test hooks (pipeline/hooks.py): `hang_decode: <file name>` makes the child hang in native code
(all signals blocked, libc `pause()`) on that file, like the decord bug: only SIGKILL ends it;
`slow_start: <seconds>` makes a fresh child that much slower to be ready (a loaded node).
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tsa.configs.schema import Geometry
from tsa.pipeline.decode import DecodedClip, DecodeError, decode_clip
from tsa.pipeline.hooks import test_hook

_ROOT = str(Path(__file__).resolve().parent.parent)  # the folder holding `pipeline/`
READY = b'{"ready": true}'
START_TIMEOUT_S = 120.0  # a child still importing after this long: the node is in trouble


def _hang_natively() -> None:
    """Block every signal and sleep in libc: stoppable by SIGKILL only (the test hook)."""
    import ctypes
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP})
    ctypes.CDLL(None).pause()


def _serve() -> None:
    """Child main loop: read requests on stdin, write replies on stdout."""
    import ctypes
    import signal

    import torch

    if sys.platform.startswith("linux"):  # die with the worker, even when hung in native code
        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    torch.set_num_threads(1)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    slow = test_hook("slow_start")
    if slow:
        time.sleep(float(slow))
    out.write(READY + b"\n")  # imports done: the client starts a decode's deadline from here
    out.flush()
    for line in inp:
        req = json.loads(line)
        path = req["path"]
        if test_hook("hang_decode") == os.path.basename(path):
            _hang_natively()
        try:
            clip = decode_clip(path, Geometry(**req["geometry"]))
        except DecodeError as e:
            out.write(json.dumps({"ok": False, "error": str(e)}).encode() + b"\n")
        else:
            frames = np.ascontiguousarray(clip.frames)
            head = {"ok": True, "shape": list(frames.shape), "indices": clip.indices, "fps": clip.fps,
                    "num_source_frames": clip.num_source_frames, "source_size": list(clip.source_size),
                    "crop_box": list(clip.crop_box), "rotation": clip.rotation}
            out.write(json.dumps(head).encode() + b"\n")
            out.write(memoryview(frames).cast("B"))
        out.flush()


def _read_exact(fd: int, buf: bytearray, n: int, deadline: float) -> None:
    """Read from `fd` until `buf` holds `n` bytes."""
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError
        chunk = os.read(fd, min(n - len(buf), 1 << 22))
        if not chunk:
            raise EOFError
        buf += chunk


def _read_line(fd: int, pending: bytearray, deadline: float) -> bytes:
    while b"\n" not in pending:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            raise EOFError
        pending += chunk
    line, _, rest = bytes(pending).partition(b"\n")
    pending[:] = rest
    return line


class DecodeClient:
    """One child decoder; `decode(path, geometry, timeout_s)` -> DecodedClip or DecodeError."""

    def __init__(self) -> None:
        self.proc: Optional[subprocess.Popen] = None
        self._pending = bytearray()

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([_ROOT, *filter(None, [env.get("PYTHONPATH")])])
        self._pending = bytearray()
        return subprocess.Popen([sys.executable, "-m", "tsa.pipeline.decode_proc"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=env, cwd=_ROOT, bufsize=0)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout):
                f.close()
            self.proc = None

    def _start_ready(self) -> None:
        """A fresh child, once it has imported what it needs (its READY line): on a loaded node
        those imports take seconds that must not count toward a clip's decode deadline."""
        self.kill()
        self.proc = self._start()
        try:
            line = _read_line(self.proc.stdout.fileno(), self._pending, time.monotonic() + START_TIMEOUT_S)
        except TimeoutError:
            self.kill()
            raise DecodeError(f"decoder process did not start within {START_TIMEOUT_S:g} s") from None
        except (EOFError, OSError) as e:
            code = self.proc.poll()
            self.kill()
            raise DecodeError(f"decoder process died at start ({type(e).__name__}, exit code {code})") from None
        if line != READY:
            self.kill()
            raise DecodeError(f"decoder process started with {line[:80]!r}, not its ready line")

    def decode(self, path: str, geometry: Geometry, timeout_s: float) -> DecodedClip:
        if self.proc is None or self.proc.poll() is not None:
            self._start_ready()
        # The deadline starts when the request is sent to a child that is ready.
        deadline = time.monotonic() + timeout_s
        req: dict[str, Any] = {"path": path, "geometry": asdict(geometry)}
        fd = self.proc.stdout.fileno()
        try:
            self.proc.stdin.write(json.dumps(req).encode() + b"\n")
            head = json.loads(_read_line(fd, self._pending, deadline))
            if not head["ok"]:
                raise DecodeError(head["error"])
            shape = tuple(head["shape"])
            size = int(np.prod(shape))
            raw = bytearray(self._pending[:size])
            del self._pending[:size]
            _read_exact(fd, raw, size, deadline)
        except TimeoutError:
            self.kill()
            raise DecodeError(f"decode timed out after {timeout_s:g} s") from None
        except (EOFError, BrokenPipeError, OSError, ValueError) as e:
            code = self.proc.poll() if self.proc else None
            self.kill()
            raise DecodeError(f"decoder process died ({type(e).__name__}, exit code {code})") from None
        frames = np.frombuffer(raw, np.uint8).reshape(shape)
        return DecodedClip(frames=frames, indices=head["indices"], fps=head["fps"],
                           num_source_frames=head["num_source_frames"], source_size=tuple(head["source_size"]),
                           crop_box=tuple(head["crop_box"]), rotation=int(head["rotation"]))

    def __del__(self) -> None:
        try:
            self.kill()
        except Exception:
            pass


_CLIENT: Optional[DecodeClient] = None


def decode_with_timeout(path: str, geometry: Geometry, timeout_s: float) -> DecodedClip:
    """`decode_clip` in this process's child decoder, killed after `timeout_s` seconds."""
    global _CLIENT
    if _CLIENT is None:
        _CLIENT = DecodeClient()
    return _CLIENT.decode(path, geometry, timeout_s)


if __name__ == "__main__":
    _serve()
