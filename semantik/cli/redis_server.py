"""A private redis-server child process: for `semantik up` on one box, and for the test suite."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from semantik.store.db import PRIVATE_FILE_MODE, make_private_dir

START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """``redis-server`` bound to loopback on ``port``; nothing is persisted (the database is the
    source of truth, and queued work is re-queued from it on start).

    Every other user of the machine can reach a loopback port, so it has a random password (the
    same across restarts of one instance). The password reaches redis-server on its standard input,
    never its command line (which ``ps`` shows everyone), and is in no file and no log line; it is
    in ``url``, which is the caller's to keep."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.password = secrets.token_urlsafe(24)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server was not found on PATH: install it (Debian/Ubuntu: apt-get install redis-server)"
                " or point SEMANTIK_REDIS_URL at a running Redis"
            )
        make_private_dir(self.directory, tighten=True)
        log_path = self.directory / "redis.log"
        log = open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE_MODE), "ab")  # noqa: SIM115
        os.chmod(log_path, PRIVATE_FILE_MODE)
        self.process = subprocess.Popen(
            [
                binary,
                "-",  # the rest of the configuration from standard input: the password
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        assert self.process.stdin is not None
        with self.process.stdin as config:
            config.write(f"requirepass {self.password}\n".encode())
        deadline = time.monotonic() + START_TIMEOUT_S
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.5)
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(
                            f"redis-server did not start on port {self.port}; see {self.directory / 'redis.log'}"
                        ) from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
