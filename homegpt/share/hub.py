"""`homegpt push`: export a run and upload it to the Hugging Face Hub as a model repository.

The token comes from where huggingface_hub looks for it (HF_TOKEN, or the file `hf auth login` writes); it is
handed to huggingface_hub and nothing else: never printed, logged, or written into the export. `--dry-run`
exports into a temporary folder and lists what would be uploaded: no token and no network needed.
Failures become one-line UserErrors: not logged in, offline, a rejected token, an invalid repo id.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from homegpt.errors import UserError

# The Hub's rule (huggingface_hub.utils.validate_repo_id), with the owner required: pushing needs to say where.
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_-])?"
REPO_ID = re.compile(rf"^{_NAME}/{_NAME}$")
HUB_URL = "https://huggingface.co"


def check_repo_id(repo_id: str) -> str:
    """The repo id if it is OWNER/NAME in the Hub's alphabet, else a UserError saying what is wrong."""
    if not REPO_ID.match(repo_id or "") or "--" in repo_id or ".." in repo_id or repo_id.endswith(".git"):
        raise UserError(f"invalid repo id {repo_id!r}: use OWNER/NAME with letters, digits, '-', '_' and '.' "
                        f"(no '--' or '..', at most 96 characters each), e.g. alice/my-gpt")
    return repo_id


def _token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def push_run(
    run_dir: str | Path,
    repo_id: str,
    private: bool = False,
    dry_run: bool = False,
    step: int | str | None = None,
    card_options: dict | None = None,
    endpoint: str | None = None,
    gguf: str | None = None,
) -> dict:
    """Export run_dir and upload it to repo_id (created if missing); with dry_run only list the files.

    gguf: also upload the model as one GGUF file of that tensor type (and its Ollama Modelfile), named after
    the repository, which the card's llama.cpp / Ollama / LM Studio commands then use."""
    from homegpt.model.gpt import GPTConfig
    from homegpt.rundir.info import read_run_info
    from homegpt.share.export import export_run
    from homegpt.share.gguf import check_quant, export_gguf, gguf_name, gguf_refusal

    check_repo_id(repo_id)
    info = read_run_info(run_dir)  # a missing run is reported before anything else
    if gguf is not None:
        check_quant(gguf)
        refusal = gguf_refusal(GPTConfig.from_dict(info["model"]))
        if refusal:
            raise UserError(f"--gguf: {refusal}")
    token = None
    if not dry_run:
        token = _token()
        if not token:
            raise UserError("not logged in to the Hugging Face Hub: run `hf auth login` or set HF_TOKEN "
                            "(a token with write access)")
    name = repo_id.split("/")[-1]
    options = dict(card_options or {}, repo_id=repo_id, gguf_file=gguf_name(name, gguf) if gguf else None)
    with tempfile.TemporaryDirectory(prefix="homegpt-push-") as tmp:
        folder = Path(tmp) / "export"
        export_run(run_dir, folder, step=step, card_options=options)
        if gguf is not None:
            written = export_gguf(run_dir, Path(tmp) / "gguf", quant=gguf, step=step, name=name)
            for key in ("gguf", "modelfile"):
                Path(written[key]).replace(folder / Path(written[key]).name)
        files = sorted((p.name, p.stat().st_size) for p in folder.iterdir() if p.is_file())
        result = {
            "repo_id": repo_id,
            "url": f"{(endpoint or HUB_URL).rstrip('/')}/{repo_id}",
            "private": private,
            "dry_run": dry_run,
            "files": [{"path": name, "bytes": size} for name, size in files],
        }
        if dry_run:
            return result
        commit = _upload(folder, repo_id, private, token, endpoint, f"homegpt export of {Path(run_dir).name}")
    result["commit_url"] = commit
    return result


def _upload(folder: Path, repo_id: str, private: bool, token: str, endpoint: str | None, message: str) -> str:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=message)
    except Exception as e:  # huggingface_hub and its HTTP client raise many types; each becomes one line
        raise UserError(describe_hub_error(e, repo_id)) from None
    return str(getattr(info, "commit_url", info))


def describe_hub_error(e: Exception, repo_id: str) -> str:
    """One line for a failed Hub call, never including the token (it is not in any of these messages)."""
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled

    if isinstance(e, OfflineModeIsEnabled):
        return "cannot push: HF_HUB_OFFLINE is set (offline mode); unset it to upload"
    if isinstance(e, HFValidationError):
        return f"invalid repo id {repo_id!r}: {str(e).splitlines()[0]}"
    if isinstance(e, HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 401:
            return "the Hugging Face Hub rejected the token (401): log in again with `hf auth login` or fix HF_TOKEN"
        if status == 403:
            return f"the token may not write to {repo_id} (403): use a token with write access to that namespace"
        if status == 404:
            return f"{repo_id} was not found and could not be created (404): check the owner name"
        return f"the Hugging Face Hub refused the upload ({status or 'HTTP error'}): {str(e).splitlines()[0]}"
    names = {c.__name__ for c in type(e).__mro__}
    if names & {"ConnectionError", "TransportError", "NetworkError", "ConnectError", "TimeoutException",
                "TimeoutError", "OSError"}:
        return f"cannot reach the Hugging Face Hub ({type(e).__name__}): check the network connection and try again"
    return f"push to {repo_id} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
