"""The pipe between the operator and a render worker.

Frames are a 4-byte length and a payload. Requests (operator -> worker) are pickled: a task
list and whether to answer each task at once (the operator trusts what it sends). Results
(worker -> operator) come in order, several to a frame, as JSON, each checked against the task
it answers, so that even a worker whose sandbox were broken could not make the operator run
code or write an object other than the one the task asked for.
"""

from __future__ import annotations

import json
import os
import select
import struct
import time
from collections.abc import Sequence
from typing import Any, BinaryIO

from default_policy_operator.core.objects import RenderedObject, key_kind, object_key
from default_policy_operator.core.render import RenderError, RenderResult, RenderTask, Trialled

HEADER = struct.Struct(">I")
READY = b"ready"
MAX_FRAME = 64 * 1024 * 1024
#: a worker sends the results it has at least this often (seconds) while a request runs
FLUSH_INTERVAL = 0.05


class WorkerGone(Exception):
    """The worker closed its pipe: it exited or was killed (by a limit, say)."""


class WorkerTimeout(Exception):
    """No answer before the deadline."""


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def write_frame(stream: BinaryIO, payload: bytes) -> None:
    stream.write(frame(payload))
    stream.flush()


def read_frame(fd: int, deadline: float | None = None) -> bytes:
    """One frame from ``fd``, waiting at most until ``deadline`` (monotonic; None: forever)."""
    (size,) = HEADER.unpack(_read_exactly(fd, HEADER.size, deadline))
    if size > MAX_FRAME:
        raise WorkerGone(f"frame of {size} bytes")
    return _read_exactly(fd, size, deadline)


def _read_exactly(fd: int, size: int, deadline: float | None) -> bytes:
    chunks, missing = [], size
    while missing:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise WorkerTimeout
        chunk = os.read(fd, min(missing, 1 << 20))
        if not chunk:
            raise WorkerGone("end of file")
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def encode_result(result: RenderResult) -> bytes:
    if isinstance(result, RenderError):
        data: dict[str, Any] = {"error": [result.policy, result.message]}
    elif isinstance(result, Trialled):
        data = {"trialled": result.policy, "shared": _object(result.shared)}
    else:
        data = {"object": _object(result)}
    return json.dumps(data, separators=(",", ":")).encode()


def _object(obj: RenderedObject | None) -> dict[str, Any] | None:
    if obj is None:
        return None
    return {"policy": obj.policy, "body": obj.body, "hash": obj.spec_hash}


def results_frame(encoded: list[bytes], *, first_next: bool) -> bytes:
    """A frame of encoded results; ``first_next``: the worker now runs a template it never ran."""
    flag = b"true" if first_next else b"false"
    return b'{"first_next":' + flag + b',"results":[' + b",".join(encoded) + b"]}"


def decode_results(tasks: Sequence[RenderTask], payload: bytes) -> tuple[list[RenderResult], bool]:
    """A frame of answers to the first of ``tasks`` (anything that does not fit is refused),
    and whether a first run of a template comes next."""
    data = json.loads(payload)
    answers = data["results"]
    if not isinstance(answers, list) or len(answers) > len(tasks):
        raise ValueError("a frame that answers more than was asked")
    results = [decode_result(task, answer) for task, answer in zip(tasks, answers, strict=False)]
    return results, bool(data["first_next"])


def decode_result(task: RenderTask, data: dict[str, Any]) -> RenderResult:
    """The worker's answer to ``task``; anything that does not fit the task is refused."""
    if "error" in data:
        policy, message = data["error"]
        return RenderError(str(policy), str(message))
    if "trialled" in data:
        shared = data["shared"]
        namespace = "" if shared is not None else None
        obj = None if shared is None else _checked(task, shared, namespace)
        if task.namespace is not None or data["trialled"] != task.policy:
            raise ValueError("a trial result for another task")
        return Trialled(task.policy, obj)
    if task.namespace is None:
        raise ValueError("an object for a trial task")
    return _checked(task, data["object"], task.namespace.name)


def _checked(task: RenderTask, data: dict[str, Any], namespace: str | None) -> RenderedObject:
    key = object_key(task.profile, task.policy, namespace or "")
    body = data["body"]
    meta = body["metadata"]
    if (
        data["policy"] != task.policy
        or key_kind(body) != key.kind
        or meta.get("name") != key.name
        or meta.get("namespace", "") != key.namespace
    ):
        raise ValueError(f"a result that does not answer {task.policy!r}")
    return RenderedObject(key, task.policy, body, str(data["hash"]))
