"""A real `homegpt serve` in its own process on a loopback port, for the tests that talk to one (tests/serve,
tests/chat): started with --port 0, ready once /health answers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai

KEY = "test-key"


class Server:
    """`python -m homegpt serve ... --port 0` in its own process; url once it listens."""

    def __init__(self, model: Path, log: Path, *flags: str) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "homegpt", "serve", str(model), "--port", "0",
                                      "--device", "cpu", *flags], stdout=log.open("w"), stderr=subprocess.STDOUT,
                                     env=env)
        deadline = time.time() + 120
        while not (m := re.search(r"at (http://127\.0\.0\.1:\d+)/", log.read_text())):
            assert self.proc.poll() is None and time.time() < deadline, f"server did not start: {log.read_text()}"
            time.sleep(0.1)
        self.url = m.group(1)
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=5).read()
                break
            except OSError:
                assert time.time() < deadline, log.read_text()
                time.sleep(0.1)

    def client(self, key: str | None = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or "none", max_retries=0, timeout=60)

    def health(self) -> dict:
        return json.loads(urllib.request.urlopen(self.url + "/health", timeout=10).read())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
