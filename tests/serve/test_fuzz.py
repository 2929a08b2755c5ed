"""Schema fuzzing: schemathesis, a real OpenAPI fuzzer, against a live `homegpt serve --api-key` on a loopback
port, driven by the schema the server itself publishes (/openapi.json).

For every operation it sends a bounded number of generated requests, valid and invalid, and checks what
schemathesis checks by default: never a 5xx, every status code and content type documented, every response
body of the documented shape (OpenAI's error JSON for the errors), and the key enforced where the schema says
it is needed. A normal greedy request before and after must get the same text, so the fuzzing left the
server as it found it.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance
from servers import KEY, Server

pytestmark = pytest.mark.usefixtures("one_thread")

GREEDY = dict(model="run", prompt="In the beginning", max_tokens=8, temperature=0)
EXAMPLES = 25  # per operation and generation mode: the whole fuzz takes well under a minute here


@pytest.fixture(scope="module")
def fuzzed(trained_run, tmp_path_factory):
    """The server, and its greedy answer before any fuzzing."""
    server = Server(trained_run[0], tmp_path_factory.mktemp("fuzz") / "log.txt", "--api-key", KEY,
                    "--max-batch", "4", "--max-queue", "8", "--name", "run")
    before = server.client().completions.create(**GREEDY).choices[0].text
    yield server, before
    server.stop()


@pytest.fixture(scope="module")
def published(fuzzed):
    return schemathesis.openapi.from_url(fuzzed[0].url + "/openapi.json")


# Each operation with the modes it has inputs for (negative cases need a field to get wrong).
CASES = [("GET", "/health", GenerationMode.POSITIVE), ("GET", "/v1/models", GenerationMode.POSITIVE),
         *[(method, path, mode) for method, path in [("GET", "/v1/models/{model_id}"), ("POST", "/v1/completions"),
                                                     ("POST", "/v1/chat/completions")] for mode in GenerationMode]]
# What a request the schema allows may still be refused for (a 400 whose message says so): what no JSON Schema
# can say. Any other 400 to a schema-valid request means the schema and the server disagree.
BEYOND_THE_SCHEMA = re.compile(r"maximum context length|not valid text|best_of: only best_of = n|"
                               r"stream_options: only allowed with stream = true|the rendered chat prompt is empty")


SENT: Counter = Counter()  # requests sent per case, so that the last test can tell the fuzzing really ran


@pytest.mark.parametrize("method, path, mode", CASES)
def test_every_operation_keeps_to_its_schema(published, method, path, mode):
    """schemathesis's cases for one operation, valid (positive) or not (negative), each sent to the server and
    its answer checked against the schema."""
    operation = published[path][method]

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(operation.as_strategy(generation_mode=mode))
    def fuzz(case) -> None:
        SENT[method, path, mode] += 1
        response = case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                                          excluded_checks=[positive_data_acceptance])
        if mode is GenerationMode.POSITIVE and response.status_code == 400:
            assert BEYOND_THE_SCHEMA.search(response.json()["error"]["message"]), response.text

    fuzz()


def test_the_schema_names_the_real_bodies(published):
    raw = published.raw_schema
    paths = raw["paths"]
    assert {"/health", "/v1/models", "/v1/models/{model_id}", "/v1/completions", "/v1/chat/completions"} <= set(paths)
    post = paths["/v1/completions"]["post"]
    assert set(post["responses"]) == {"200", "400", "401", "404", "503"}  # no FastAPI 422: errors are OpenAI's
    assert "text/event-stream" in post["responses"]["200"]["content"]
    error = raw["components"]["schemas"]["ErrorDetail"]
    assert set(error["properties"]) == {"message", "type", "param", "code"}
    request = raw["components"]["schemas"]["CompletionRequest"]["properties"]
    assert request["temperature"]["maximum"] == 2.0 and request["n"]["maximum"] == 16
    assert post["security"] == [{"bearer": []}] and "security" not in paths["/health"]["get"]


def test_after_fuzzing_the_server_answers_as_before(fuzzed):
    server, before = fuzzed
    # every case ran (GET /health has one input only); not SENT: this test alone, with -k
    assert not SENT or all(SENT[c] >= (1 if c[1] == "/health" else 10) for c in CASES), SENT
    assert server.client().completions.create(**GREEDY).choices[0].text == before
    assert server.proc.poll() is None and server.health()["status"] == "ok"
