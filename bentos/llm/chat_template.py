"""Chat templates rendered where a hostile one can be stopped: in a child process.

A chat template is Jinja code written by whoever pushed the model.  transformers renders it in
a sandbox that forbids attribute tricks, but not work: two nested ``range(100000)`` loops, or
``'x' * 1500000000``, hold a thread and gigabytes for as long as they like, and a thread cannot
be stopped.  So the template runs (and the chat is tokenized) in a small pool of child
processes, each with a memory ceiling (``RLIMIT_DATA``); a render that takes longer than the
time limit is answered with a 400 naming the template, and its process is killed and replaced
while the others go on serving.  Nothing here runs in the serving process's threads, so the
server keeps answering other requests and stops on SIGTERM as usual.

The chat is tokenized with ``sanitize_control_tokens``: control tokens written in a message
(``<|system|>`` in a user's text) are encoded as text, so a user cannot forge another role's
turn; only the template's own markers become control tokens.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import resource
import select
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from modelyard.bentos.llm.protocol import ApiError

log = logging.getLogger("bentoml.modelyard")

RENDER_SECONDS = 2.0
"""The longest a chat's rendering and tokenizing may take (real templates take milliseconds)."""
RENDER_MEMORY_BYTES = 1 << 30
"""The memory a rendering process may add to what it holds after loading the tokenizer."""
WORKERS = 2
"""Rendering processes: while one is replaced, the other serves."""
START_SECONDS = 120.0


class ChatTemplateRenderer:
    """Renders and tokenizes chats in ``workers`` child processes with time and memory bounds."""

    def __init__(self, root: str, *, trust_remote_code: bool, workers: int = WORKERS, seconds: float = RENDER_SECONDS,
                 memory_bytes: int = RENDER_MEMORY_BYTES, sanitize: bool = True) -> None:
        """``sanitize``: encode control tokens written in messages as text (transformers 5.20 and newer);
        off where the caller only bounds the rendering (vLLM's guard, on the transformers vLLM pins)."""
        self.root, self.trust_remote_code, self.sanitize = root, trust_remote_code, sanitize
        self.seconds, self.memory_bytes = seconds, memory_bytes
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="chat-template")
        """Where ``encode`` runs: chats wait for a renderer here, not in the loop's default threads."""
        for _ in range(workers):
            self._idle.put(self._start())

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        """The chat's token ids, or ``ApiError(400)`` when the template refuses the messages or
        exceeds its bounds.  Blocking: call it from ``executor``."""
        try:
            worker = self._idle.get(timeout=START_SECONDS)
        except queue.Empty:
            raise ApiError(503, "no chat template renderer is free", kind="server_error") from None
        healthy = False
        try:
            worker.ready()
            kind, value = worker.ask(messages, self.seconds)
            healthy = kind in ("ids", "error")
        except TimeoutError:
            raise ApiError(400, f"the model's chat template took longer than {self.seconds:g} s to render: it is "
                                "refused (a template is bounded in time and memory)",
                           param="messages", code="chat_template_limit") from None
        except (EOFError, OSError, ValueError):
            raise ApiError(400, "the model's chat template exhausted its renderer (memory, or a crash): it is "
                                "refused", param="messages", code="chat_template_limit") from None
        finally:
            self._idle.put(worker if healthy else self._replace(worker))
        if kind == "ids":
            return list(value)
        if kind == "memory":
            raise ApiError(400, f"the model's chat template needed more than {self.memory_bytes >> 20} MiB to "
                                "render: it is refused", param="messages", code="chat_template_limit")
        raise ApiError(400, f"the model's chat template refused these messages: {value}", param="messages")

    def _start(self) -> _Worker:
        command = [sys.executable, "-m", __name__, self.root, "1" if self.trust_remote_code else "0",
                   str(self.memory_bytes), "1" if self.sanitize else "0"]
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        return _Worker(process)

    def _replace(self, worker: _Worker) -> _Worker:
        worker.kill()
        return self._start()


class _Worker:
    """One child process, spoken to in JSON lines over its standard input and output."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self._ready = False
        self._buffer = b""

    def ready(self) -> None:
        """Wait for the child's first word (it has loaded the tokenizer), or raise what it said."""
        if self._ready:
            return
        kind, value = self._read(START_SECONDS)
        if kind != "ready":
            raise ApiError(500, f"the chat template renderer could not start: {value}", kind="server_error")
        self._ready = True

    def ask(self, messages: list[dict[str, str]], seconds: float) -> tuple[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(messages).encode() + b"\n")
        return self._read(seconds)

    def _read(self, seconds: float) -> tuple[str, Any]:
        out: IO[bytes] | None = self.process.stdout
        assert out is not None
        deadline = time.monotonic() + seconds
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([out], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(out.fileno(), 1 << 20)
            if not chunk:
                raise EOFError("the renderer exited")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        kind, value = json.loads(line)
        return kind, value

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=5)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


def main(root: str, trust_remote_code: bool, memory_bytes: int, sanitize: bool = True) -> None:
    """The child: load the tokenizer, cap the memory it may still take, then render on request."""
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # whatever a library prints goes to stderr, not into the protocol

    def say(kind: str, value: Any) -> None:
        out.write(json.dumps([kind, value]).encode() + b"\n")

    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(root, trust_remote_code=trust_remote_code, local_files_only=True)
        _limit_memory(memory_bytes)
    except Exception as exc:  # noqa: BLE001 - said to the parent, which refuses chats with it
        say("error", f"{type(exc).__name__}: {exc}")
        return
    say("ready", None)
    for line in sys.stdin.buffer:
        try:
            messages = json.loads(line)
            options: dict[str, Any] = {"sanitize_control_tokens": True} if sanitize else {}
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                return_dict=False, **options)
            say("ids", list(ids))
        except MemoryError:
            say("memory", None)
            return  # a process that ran out of memory is not trusted further
        except Exception as exc:  # noqa: BLE001 - a template may raise on what it does not accept (roles, order)
            say("error", str(exc)[:500])


def _limit_memory(extra: int) -> None:
    used = 0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                used = int(line.split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_DATA, (used + extra, used + extra))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4:5] != ["0"])
