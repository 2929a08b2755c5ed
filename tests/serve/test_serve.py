"""`homegpt serve`: real server processes on loopback ports, driven by the official openai client and by a real
headless Chromium through Playwright.

Two servers: the session's tiny trained run (modern architecture, 64-token context) behind an API key, and a
`homegpt export` folder of a GPT-2 (2,048-token context) with a chat template, whose weights are built here so
that it never ends a text by itself (its <|endoftext|> logit is pinned far below the rest), for the tests
that need long streams: a client that goes away, the playground's stop button.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest
import torch
from servers import KEY, Server

from homegpt.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process sampling of tiny models: see conftest

TEMPLATE = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>\n"
            "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")


def never_ending_gpt2(tok_dir: Path, work: Path) -> tuple[Path, Path]:
    """A run and its export: a random GPT-2 whose <|endoftext|> logit is pinned far below every other one."""
    from homegpt.data.tokenizer import EOT, load_tokenizer, round_vocab
    from homegpt.model.gpt import GPT, GPTConfig
    from homegpt.share.export import export_run, write_run

    tok = load_tokenizer(tok_dir / "tokenizer.json")
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=2048,
                          vocab_size=round_vocab(tok.get_vocab_size()), arch="gpt2"))
    with torch.no_grad():  # h = LayerNorm(x) + 20 e0, |LayerNorm(x)| = 8: h . (-e0) <= -12, other logits ~ N(0, 0.4)
        model.transformer.ln_f.bias.zero_()[0] = 20.0
        model.transformer.wte.weight[tok.token_to_id(EOT)] = 0.0
        model.transformer.wte.weight[tok.token_to_id(EOT), 0] = -1.0
    run = work / "gpt2-run"
    run.mkdir()
    shutil.copyfile(tok_dir / "tokenizer.json", run / "tokenizer.json")
    write_run(run, model.config, {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"})
    export = work / "gpt2-export"
    export_run(run, export, samples=[])
    (export / "chat_template.jinja").write_text(TEMPLATE, encoding="utf-8")
    return run, export


@pytest.fixture(scope="module")
def run_server(trained_run, tmp_path_factory):
    server = Server(trained_run[0], tmp_path_factory.mktemp("serve-run") / "log.txt", "--api-key", KEY,
                    "--max-batch", "4", "--max-queue", "8")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gpt2(tokenizer_dir, tmp_path_factory):
    return never_ending_gpt2(Path(tokenizer_dir), tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="module")
def export_server(gpt2, tmp_path_factory):
    server = Server(gpt2[1], tmp_path_factory.mktemp("serve-export") / "log.txt", "--cors", "http://allowed.example")
    yield server
    server.stop()


def sample_cli(capsys, run: Path, prompt: str, *flags) -> list[dict]:
    code = main(["sample", str(run), "--prompt", prompt, "--json", *[str(f) for f in flags]])
    out, _ = capsys.readouterr()
    assert code == 0
    return json.loads(out.strip().splitlines()[-1])["results"]


def raw(server: Server, method: str, path: str, body: dict | str | None = None, headers: dict | None = None):
    data = body if isinstance(body, str) or body is None else json.dumps(body)
    req = urllib.request.Request(server.url + path, data=data.encode() if data is not None else None, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


# --------------------------------------------------------------------------------------------- the API


def test_models_and_health(run_server):
    models = run_server.client().models.list().data
    assert [m.id for m in models] == ["run"] and models[0].context_length == 64
    assert run_server.health()["status"] == "ok"


@pytest.mark.parametrize("settings", [dict(temperature=0.0), dict(temperature=0.9, top_k=40, seed=11, n=3)])
def test_completions_equal_homegpt_sample_streamed_or_not(run_server, trained_run, capsys, settings):
    prompt, n, seed = "And the king said", settings.get("n", 1), settings.get("seed", 0)
    expected = sample_cli(capsys, trained_run[0], prompt, "--temperature", settings["temperature"], "--top-k",
                          settings.get("top_k", 0), "--seed", seed, "--num-samples", n, "--max-new-tokens", 30)
    client = run_server.client()
    args = dict(model="run", prompt=prompt, max_tokens=30, temperature=settings["temperature"], seed=seed, n=n,
                extra_body={"top_k": settings.get("top_k", 0)})
    whole = client.completions.create(**args)
    assert [c.text for c in whole.choices] == [r["text"] for r in expected]
    assert [c.finish_reason for c in whole.choices] == [{"eot": "stop"}.get(r["finish_reason"], r["finish_reason"])
                                                        for r in expected]
    assert whole.usage.completion_tokens == sum(r["new_tokens"] for r in expected)
    chunks = list(client.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1 and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    for i in range(n):
        mine = [ch.choices[0] for ch in chunks if ch.choices and ch.choices[0].index == i]
        assert "".join(c.text for c in mine) == expected[i]["text"]
        assert [c.finish_reason for c in mine][-1] == whole.choices[i].finish_reason
        assert all(c.finish_reason is None for c in mine[:-1])


def test_stop_strings_echo_and_prompt_lists(run_server, trained_run, capsys):
    full = sample_cli(capsys, trained_run[0], "The", "--temperature", 0, "--max-new-tokens", 30)[0]["text"]
    stop = full[5:8]
    cut = sample_cli(capsys, trained_run[0], "The", "--temperature", 0, "--max-new-tokens", 30, "--stop", stop)[0]
    client = run_server.client()
    r = client.completions.create(model="run", prompt=["The", "In the"], max_tokens=30, temperature=0, stop=[stop],
                                  echo=True)
    assert r.choices[0].text == "The" + cut["text"] and r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="run", prompt="The", max_tokens=30, temperature=0, stop=stop, stream=True) if c.choices)
    assert streamed == cut["text"] and stop not in streamed
    alone = client.completions.create(model="run", prompt="In the", max_tokens=30, temperature=0, stop=[stop])
    assert r.choices[1].text == "In the" + alone.choices[0].text


def test_chat_without_a_template_is_the_documented_plain_prompt(run_server):
    from homegpt.data.chatml import plain_text

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who was David?"}]
    client = run_server.client()
    chat = client.chat.completions.create(model="run", messages=messages, max_tokens=20, temperature=0)
    plain = client.completions.create(model="run", prompt=plain_text(messages), max_tokens=20, temperature=0,
                                      stop=["\nUser:"])
    assert plain_text(messages) == "Be brief.\n\nUser: Who was David?\nAssistant:"
    assert chat.choices[0].message.content == plain.choices[0].text
    assert chat.choices[0].message.role == "assistant" and chat.usage.prompt_tokens == plain.usage.prompt_tokens
    chunks = list(client.chat.completions.create(model="run", messages=messages, max_tokens=20, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == chat.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == chat.choices[0].finish_reason


def test_errors_are_openais_and_the_server_keeps_serving(run_server, trained_run):
    from homegpt.data.tokenizer import load_tokenizer

    n_prompt = 1 + len(load_tokenizer(trained_run[0] / "tokenizer.json").encode("In the beginning").ids)
    client = run_server.client()
    bad = [dict(temperature=3.0), dict(n=0), dict(top_p=0), dict(stop=[""]), dict(max_tokens="many")]
    for fields in bad:
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(**{"model": "run", "prompt": "The", **fields})
        assert e.value.status_code == 400 and e.value.param in (next(iter(fields)), None)
    with pytest.raises(openai.BadRequestError, match=rf"maximum context length is 64 tokens.*\({n_prompt} in the "
                                                     r"prompt, 100 for the completion\)"):
        client.completions.create(model="run", prompt="In the beginning", max_tokens=100)
    with pytest.raises(openai.BadRequestError, match="role"):
        client.chat.completions.create(model="run", messages=[{"role": "wizard", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        run_server.client(key="wrong").models.list()
    status, _, body = raw(run_server, "GET", "/v1/models")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-4", prompt="The")
    status, _, body = raw(run_server, "POST", "/v1/nothing", {}, {"Authorization": f"Bearer {KEY}"})
    assert status == 404 and set(body["error"]) == {"message", "type", "param", "code"}
    status, _, body = raw(run_server, "POST", "/v1/completions", "{not json", {"Authorization": f"Bearer {KEY}"})
    assert status == 400 and "JSON" in body["error"]["message"]
    with pytest.raises(openai.InternalServerError) as e:  # 9 rows at once: more than --max-queue 8
        client.completions.create(model="run", prompt=["a", "b", "c"], n=3, max_tokens=2)
    assert e.value.status_code == 503
    assert client.completions.create(model="run", prompt="The", max_tokens=3).choices[0].text is not None
    assert run_server.health()["errors"] == 0 and run_server.proc.poll() is None


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", {"model": "run", "prompt": "ab\ud800"}, "prompt"),  # legal JSON, not text
    ("/v1/completions", {"model": "run", "prompt": ["ok", "\udc80"]}, "prompt.1"),
    ("/v1/completions", {"model": "run", "prompt": "ok", "stop": ["\ud800"]}, "stop.0"),
    ("/v1/completions", {"model": "run\ud800", "prompt": "ok"}, "model"),
    ("/v1/chat/completions", {"model": "run", "messages": [{"role": "user", "content": "\udfff"}]},
     "messages.0.content"),
    ("/v1/chat/completions",
     {"model": "run", "messages": [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]},
     "messages.0.content.0.text"),
])
def test_text_that_is_not_unicode_is_a_400_naming_the_field(run_server, path, body, param):
    status, _, reply = raw(run_server, "POST", path, body, {"Authorization": f"Bearer {KEY}"})
    assert status == 400, reply
    assert reply["error"]["param"] == param and "not valid text" in reply["error"]["message"], reply
    assert run_server.client().completions.create(model="run", prompt="The", max_tokens=2).choices[0].text is not None
    assert run_server.health()["errors"] == 0


def concurrent(server: Server, jobs: list[dict], key: str | None = KEY) -> list[str]:
    client, out, barrier = server.client(key), [None] * len(jobs), threading.Barrier(len(jobs))

    def work(i: int) -> None:
        barrier.wait()
        stream = client.completions.create(**jobs[i], stream=True)
        out[i] = "".join(c.choices[0].text for c in stream if c.choices)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return out


@pytest.mark.parametrize("which", ["run", "export"])
def test_eight_concurrent_clients_each_get_what_they_get_alone(run_server, export_server, which):
    server, key = (run_server, KEY) if which == "run" else (export_server, None)
    model, budget = ("run", 12) if which == "run" else ("gpt2-export", 80)
    prompts = ["The", "In the beginning", "And", "Love is", "He said", "", "The king", "Jesus"]
    jobs = [dict(model=model, prompt=p, max_tokens=budget + 5 * i, temperature=0.0 if i % 3 == 0 else 0.9,
                 seed=i, extra_body={"top_k": 30}) for i, p in enumerate(prompts)]
    client = server.client(key)
    alone = [client.completions.create(**job).choices[0].text for job in jobs]
    assert concurrent(server, jobs, key) == alone
    if which == "export":  # long rows: they really shared steps
        assert server.health()["peak_running"] >= 4


# --------------------------------------------------------------------------------------------- an export folder


def test_an_export_folder_serves_what_its_run_samples(export_server, gpt2, capsys):
    run, _ = gpt2
    client = export_server.client(None)
    models = client.models.list().data
    assert models[0].id == "gpt2-export" and models[0].context_length == 2048
    for flags, args in [(["--temperature", 0], dict(temperature=0)),
                        (["--temperature", 1.0, "--top-k", 0, "--seed", 5], dict(temperature=1.0, seed=5))]:
        expected = sample_cli(capsys, run, "In the", *flags, "--max-new-tokens", 40)[0]["text"]
        got = client.completions.create(model="gpt2-export", prompt="In the", max_tokens=40, **args)
        assert got.choices[0].text == expected and len(expected) > 0


def test_a_qwen3_export_loads_into_memory_as_its_run(trained_run, tmp_path):
    """The modern run's export (Qwen3ForCausalLM) is what a server loads: the same weights, the same text."""
    from homegpt.generate.sample import SampleOptions, generate
    from homegpt.rundir.checkpoint import load_run
    from homegpt.serve.loading import load_served
    from homegpt.share.export import export_run

    export_run(trained_run[0], tmp_path / "qwen3", samples=[])
    served, run = load_served(tmp_path / "qwen3", device="cpu"), load_run(trained_run[0], device="cpu")
    assert served.source == "Qwen3ForCausalLM" and served.name == "qwen3" and served.chat.kind == "plain"
    assert served.model.config == run.model.config
    opts = SampleOptions(max_new_tokens=20, temperature=0.9, top_k=40, seed=3)
    prompts = ["The king", "In the beginning"]
    assert [c.tokens for c in generate(served.model, served.tokenizer, prompts, opts)] == \
        [c.tokens for c in generate(run.model, run.tokenizer, prompts, opts)]


def test_a_chat_template_renders_as_transformers_does(export_server, gpt2):
    from transformers import AutoTokenizer

    from homegpt.data.chatml import load_chat_format

    _, export = gpt2
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Who are you?"}]
    theirs = AutoTokenizer.from_pretrained(export).apply_chat_template(messages, tokenize=False,
                                                                        add_generation_prompt=True)
    prompt = load_chat_format(export).render(messages)
    assert prompt.text == theirs and prompt.text.startswith("<|endoftext|><system>Be brief.</system>")
    client = export_server.client(None)
    chat = client.chat.completions.create(model="gpt2-export", messages=messages, max_tokens=25, temperature=0)
    plain = client.completions.create(model="gpt2-export", prompt=theirs.removeprefix("<|endoftext|>"),
                                      max_tokens=25, temperature=0)
    assert chat.choices[0].message.content == plain.choices[0].text


def test_chat_formats_read_from_a_folder(tmp_path):
    from homegpt.data.chatml import ChatFormat, load_chat_format
    from homegpt.errors import UserError

    msgs = [{"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "kind."}]},
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"}]
    plain = ChatFormat().render(msgs)
    assert plain.text == "Be kind.\n\nUser: Hi\nAssistant: Hello.\nUser: Bye\nAssistant:"
    assert plain.start_marker and plain.stop == ("\nUser:",)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": {"content": "<|im_end|>"}, "chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": "{% for m in messages %}{% if m.role == 'assistant' %}"
                                            "{{ raise_exception('no assistant turns') }}{% endif %}"
                                            "[{{ m.content }}]{% endfor %}{{ eos_token }}"}]}))
    fmt = load_chat_format(tmp_path)
    prompt = fmt.render(msgs[:2])
    assert (prompt.text, prompt.start_marker, prompt.end_tokens) == ("[Be kind.][Hi]<|im_end|>", False, ("<|im_end|>",))
    with pytest.raises(UserError, match="no assistant turns"):
        fmt.render(msgs)
    with pytest.raises(UserError, match="role"):
        fmt.render([{"role": "tool", "content": "x"}])
    (tmp_path / "chat_template.jinja").write_text("{{ messages | length }}")  # the file wins, as in transformers
    assert load_chat_format(tmp_path).render(msgs).text == "4"


def test_cors_only_when_asked(export_server, run_server):
    _, headers, _ = raw(export_server, "GET", "/v1/models", headers={"Origin": "http://allowed.example"})
    assert headers.get("access-control-allow-origin") == "http://allowed.example"
    _, headers, _ = raw(run_server, "GET", "/health", headers={"Origin": "http://allowed.example"})
    assert "access-control-allow-origin" not in {k.lower() for k in headers}


def test_a_client_that_goes_away_stops_its_generation(export_server):
    before = export_server.health()
    host, port = export_server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/v1/completions", json.dumps(dict(model="gpt2-export", prompt="The", max_tokens=2000,
                                                            stream=True, temperature=1.0)),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.readline().startswith(b"data: ")
    conn.sock.close()  # the client goes away mid-stream
    conn.close()
    deadline = time.time() + 30
    while (h := export_server.health())["cancelled"] == before["cancelled"] or h["running"]:
        assert time.time() < deadline, h
        time.sleep(0.05)
    assert h["tokens"] - before["tokens"] < 2000  # it stopped early; nothing else ran meanwhile


def engine_process(server: Server):
    """The engine process `homegpt serve` spawned (not multiprocessing's resource tracker)."""
    import psutil

    kids = [p for p in psutil.Process(server.proc.pid).children() if "spawn_main" in " ".join(p.cmdline())]
    assert len(kids) == 1, [p.cmdline() for p in psutil.Process(server.proc.pid).children()]
    return kids[0]


def wait_for_status(server: Server, status: str) -> dict:
    deadline = time.time() + 60
    while (h := server.health())["status"] != status:
        assert time.time() < deadline, h
        time.sleep(0.05)
    return h


def test_a_dead_engine_process_fails_its_requests_and_is_restarted_once(gpt2, tmp_path):
    server = Server(gpt2[1], tmp_path / "log.txt")
    try:
        client, first = server.client(), engine_process(server)
        assert client.completions.create(model="gpt2-export", prompt="The", max_tokens=3).usage.completion_tokens == 3
        stream = client.completions.create(model="gpt2-export", prompt="The", max_tokens=2000, stream=True)
        next(iter(stream))  # it is generating
        first.kill()
        with pytest.raises(openai.APIError):  # the open stream ends with an error, not with [DONE]
            for _ in stream:
                pass
        h = wait_for_status(server, "ok")  # a new engine process, from the same weights
        assert h["engine_restarts"] == 1 and engine_process(server).pid != first.pid
        again = client.completions.create(model="gpt2-export", prompt="The", max_tokens=3, temperature=0)
        assert again.usage.completion_tokens == 3
        engine_process(server).kill()  # dead again within a minute of its restart: no second restart
        h = wait_for_status(server, "error")
        assert h["engine_restarts"] == 1 and "exit code" in h["engine_exited"]
        with pytest.raises(openai.InternalServerError) as e:
            client.completions.create(model="gpt2-export", prompt="The", max_tokens=3)
        assert e.value.status_code == 503 and "restart homegpt serve" in str(e.value)
        assert server.proc.poll() is None  # the HTTP side goes on answering
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("extra", [["--port", "99999"], ["--max-batch", "0"], ["--threads", "0"], ["--step", "99999"]])
def test_serve_cli_bad_input_is_one_line_exit_2(trained_run, capsys, extra):
    code = main(["serve", str(trained_run[0]), "--device", "cpu", *extra])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_serve_cli_refuses_a_missing_folder_a_busy_port_and_step_on_an_export(run_server, gpt2, capsys, tmp_path):
    port = run_server.url.rsplit(":", 1)[1]
    for argv, says in ((["serve", str(tmp_path / "nope")], "does not exist"),
                       (["serve", str(gpt2[0]), "--port", port, "--device", "cpu"], "already in use"),
                       (["serve", str(gpt2[1]), "--step", "best"], "drop --step")):
        code = main(argv)
        _, err = capsys.readouterr()
        assert code == 2 and len(err.strip().splitlines()) == 1 and says in err, err


# --------------------------------------------------------------------------------------------- the playground


CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    path = os.environ.get("HOMEGPT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    assert Path(path).exists(), "the playground test needs Chromium: apt-get install chromium (or HOMEGPT_CHROMIUM)"
    return path


@pytest.fixture(scope="module")
def page(export_server, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(str(tmp_path_factory.mktemp("chromium-profile")),
                                                       executable_path=chromium(), headless=True,
                                                       args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.goto(export_server.url + "/")
        yield page
        browser.close()


def test_playground_streams_a_completion_and_stops_it(page, export_server):
    from playwright.sync_api import expect

    expect(page.locator("#model-name")).to_contain_text("gpt2-export")
    before = export_server.health()["cancelled"]
    page.select_option("#mode", "completion")
    page.fill("#max-tokens", "2000")  # seconds of streaming on any machine: time to press stop
    page.fill("#prompt", "In the beginning")
    page.click("#send")
    generated = page.locator("#generated")
    expect(generated).not_to_be_empty(timeout=30_000)  # streamed text arrives while it is generating
    expect(page.locator("#stop")).to_be_enabled()
    page.click("#stop")
    expect(page.locator("#status")).to_have_text("stopped")
    shown = generated.inner_text()
    deadline = time.time() + 30
    while export_server.health()["cancelled"] == before:
        assert time.time() < deadline
        time.sleep(0.05)
    assert page.locator("#output").inner_text().startswith("In the beginning")
    assert generated.inner_text() == shown and len(shown) > 0
    assert export_server.health()["running"] == 0


def test_playground_chats(page, export_server):
    from playwright.sync_api import expect

    page.select_option("#mode", "chat")
    page.fill("#max-tokens", "12")
    page.fill("#prompt", "Who are you?")
    page.click("#send")
    expect(page.locator("#status")).to_have_text(re.compile("^done"), timeout=30_000)
    expect(page.locator("#output .user")).to_contain_text("Who are you?")
    expect(page.locator("#output .assistant")).not_to_have_text(re.compile(r"^assistant$"))
    expect(page.locator("#stats")).to_contain_text("tokens/s")
