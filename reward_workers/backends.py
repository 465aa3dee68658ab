"""Where judges get replies from: an in-process vLLM engine, an OpenAI-compatible HTTP server, transformers.

Every backend takes a batch of `JudgeRequest`s and returns one reply per request, or None where the request
failed (timeout, dead server, engine error). Backends never raise from `generate`; the judge retries what
failed or did not parse, then counts it as a tie.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)
CHILD_SITE = Path(__file__).resolve().parent / "child_site"  # sitecustomize for vLLM's Python children


@dataclass(frozen=True)
class JudgeRequest:
    """One chat turn for the judge: text and images in the order shown."""

    parts: tuple[str | np.ndarray, ...]  # text, or a uint8 [H, W, 3] image

    @property
    def images(self) -> list[np.ndarray]:
        return [p for p in self.parts if isinstance(p, np.ndarray)]


@dataclass(frozen=True)
class Generation:
    """How replies are generated. json_schema or regex (at most one) constrains them: structured outputs."""

    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    json_schema: dict | None = None
    regex: str | None = None


class JudgeBackend(Protocol):
    retry_delay_s: float  # pause before retrying requests that failed (not those merely unparsed)

    def generate(self, requests: list[JudgeRequest], generation: Generation) -> list[str | None]:
        """One reply per request (None: the request failed). Never raises."""
        ...

    def close(self) -> None: ...


def to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(image))


def png_data_url(image: np.ndarray) -> str:
    """A uint8 [H, W, 3] image as a base64 PNG data URL (the OpenAI chat API's image_url)."""
    buffer = io.BytesIO()
    to_pil(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def prepare_vllm_environment() -> None:
    """Before vLLM starts: ask for an in-process engine; prepare torchvision in the children vLLM spawns."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(CHILD_SITE) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(CHILD_SITE)] + [p for p in paths if p])


# ----------------------------------------------------------------------------------------------- vLLM engine
@dataclass
class _Engine:
    llm: object  # vllm.LLM
    users: int


_ENGINES: dict[tuple, _Engine] = {}
_ENGINES_LOCK = threading.Lock()


class VllmBackend:
    """An in-process `vllm.LLM`; each batch of requests is one `llm.chat` call.

    Judges on the same model share one engine (reference-counted), so swapping Flex for Think on one model
    does not reload it.
    """

    retry_delay_s = 0.0

    def __init__(self, model: str, max_images: int) -> None:
        self.key = (model, max_images)
        with _ENGINES_LOCK:
            if self.key not in _ENGINES:
                _ENGINES[self.key] = _Engine(llm=_start_engine(model, max_images), users=0)
            _ENGINES[self.key].users += 1
        self.llm = _ENGINES[self.key].llm
        self.closed = False

    def generate(self, requests: list[JudgeRequest], generation: Generation) -> list[str | None]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = None
        if generation.json_schema is not None:
            structured = StructuredOutputsParams(json=generation.json_schema)
        elif generation.regex is not None:
            structured = StructuredOutputsParams(regex=generation.regex)
        params = SamplingParams(
            max_tokens=generation.max_new_tokens,
            temperature=generation.temperature,
            structured_outputs=structured,
        )
        conversations = [[{"role": "user", "content": [_vllm_part(p) for p in r.parts]}] for r in requests]
        try:
            outputs = self.llm.chat(conversations, params, use_tqdm=False)  # type: ignore[attr-defined]
            return [o.outputs[0].text if o.outputs else None for o in outputs]
        except Exception:
            log.exception("vLLM engine failed on a batch of %d judge requests", len(requests))
            return [None] * len(requests)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with _ENGINES_LOCK:
            engine = _ENGINES[self.key]
            engine.users -= 1
            if engine.users == 0:
                del _ENGINES[self.key]
                _stop_engine(engine.llm)
        self.llm = None


def _vllm_part(part: str | np.ndarray) -> dict:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    return {"type": "image_pil", "image_pil": to_pil(part)}


def _start_engine(model: str, max_images: int):
    prepare_vllm_environment()
    import torch
    import vllm

    return vllm.LLM(
        model=model,
        enforce_eager=not torch.cuda.is_available(),  # CUDA graphs on GPUs; eager on CPU (fast start)
        limit_mm_per_prompt={"image": max_images},
        enable_prefix_caching=True,  # the requests of a group share their instructions
        structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True},  # compact JSON replies
        seed=0,
    )


def _stop_engine(llm) -> None:
    import gc

    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)  # the in-process engine core client
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del llm
    gc.collect()


# ----------------------------------------------------------------------------------------------- HTTP
class HttpBackend:
    """An OpenAI-compatible chat server (e.g. `vllm serve`): one HTTP request per judge request.

    At most `max_concurrency` requests are in flight (a thread pool). Images travel as base64 PNG data URLs.
    A JSON schema goes as `response_format` (OpenAI API); a regex as vLLM's `structured_outputs` extension.
    """

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        max_concurrency: int = 16,
        timeout_s: float = 120.0,
        retry_delay_s: float = 1.0,
    ) -> None:
        import httpx

        self.endpoint = url.rstrip("/") + "/chat/completions"
        self.model = model
        self.retry_delay_s = retry_delay_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(
            headers=headers,
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
        )
        self.pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="judge-http")

    def generate(self, requests: list[JudgeRequest], generation: Generation) -> list[str | None]:
        return list(self.pool.map(lambda r: self._one(r, generation), requests))

    def payload(self, request: JudgeRequest, generation: Generation) -> dict:
        """The chat-completions body of one judge request."""
        content = [
            {"type": "text", "text": p}
            if isinstance(p, str)
            else {"type": "image_url", "image_url": {"url": png_data_url(p)}}
            for p in request.parts
        ]
        body: dict = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": generation.max_new_tokens,
            "temperature": generation.temperature,
        }
        if generation.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "judgement", "schema": generation.json_schema},
            }
        elif generation.regex is not None:
            body["structured_outputs"] = {"regex": generation.regex}
        return body

    def _one(self, request: JudgeRequest, generation: Generation) -> str | None:
        try:
            response = self.client.post(self.endpoint, json=self.payload(request, generation))
            response.raise_for_status()
            content = response.json()["choices"][0]["message"]["content"]
            return content if isinstance(content, str) else None
        except Exception as err:  # timeouts, refused connections, HTTP errors, bodies that are not replies
            log.warning("judge request to %s failed: %s", self.endpoint, f"{type(err).__name__}: {err}"[:300])
            return None

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.client.close()


# ----------------------------------------------------------------------------------------------- transformers
class TransformersBackend:
    """`generate` of a transformers image-text-to-text model, one request at a time. No structured outputs:
    a constrained generation's schema or regex is ignored, so replies must parse on their own."""

    retry_delay_s = 0.0

    def __init__(self, model: str) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.processor = AutoProcessor.from_pretrained(model)
        self.model = AutoModelForImageTextToText.from_pretrained(model, dtype=dtype).to(self.device).eval()

    def generate(self, requests: list[JudgeRequest], generation: Generation) -> list[str | None]:
        return [self._one(r, generation) for r in requests]

    def _one(self, request: JudgeRequest, generation: Generation) -> str | None:
        import torch

        try:
            content = [
                {"type": "text", "text": p} if isinstance(p, str) else {"type": "image"}
                for p in request.parts
            ]
            text = self.processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
            )
            images = [to_pil(i) for i in request.images] or None
            inputs = self.processor(text=[text], images=images, return_tensors="pt").to(self.device)
            sampling = {"do_sample": generation.temperature > 0}
            if generation.temperature > 0:
                sampling["temperature"] = generation.temperature
            with torch.no_grad():
                out = self.model.generate(**inputs, max_new_tokens=generation.max_new_tokens, **sampling)
            return self.processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        except Exception:
            log.exception("transformers judge failed on one request")
            return None

    def close(self) -> None:
        self.model = None
