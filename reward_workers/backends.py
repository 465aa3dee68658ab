"""Where judges get replies from: an in-process vLLM engine, an OpenAI-compatible HTTP server, transformers.

Every backend takes a batch of `JudgeRequest`s and returns one reply per request, or None where the request
failed (timeout, dead server, engine error). Backends never raise from `generate`; the judge retries what
failed or did not parse, then counts it as a tie. Images travel as the authors send them: JPEG, quality 95
(the in-process engines get the decoded JPEG, the pixels a server would see).
"""

from __future__ import annotations

import base64
import io
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)
CHILD_SITE = Path(__file__).resolve().parent / "child_site"  # sitecustomize for vLLM's Python children
JPEG_QUALITY = 95
# Batch limits of the in-process engine: vLLM's own defaults on large GPUs, also on CPU (where they are 256 and
# 4,096): a learner step's requests decode in one wave (8 groups of G = 9 are 288 pairs) and a step prefills
# ~12 Flex prompts instead of ~3.
MAX_BATCH_REQUESTS = 1024
MAX_BATCH_TOKENS = 16384
# The engine's context (prompt + reply tokens). vLLM sizes it to the model's own by default (Qwen3-VL: 262,144)
# and refuses to start unless the KV cache holds one whole such sequence: 36 GiB in bf16 for an 8B Qwen3-VL.
# The largest judge request of the recipes is a Flex video pair at 480x832 (16 frames: 6,240 image tokens and
# the template, ~7.7k; benchmarks/real_shape_table.py) plus a 4,096-token reply.
JUDGE_MAX_MODEL_LEN = 32768
# KV cache of an engine on CPU when the spec sets none: vLLM-CPU would otherwise reserve 92% of the machine's
# memory and refuse to start beside the other roles. 1 GiB holds ~18k tokens of a 7B Qwen-VL judge.
CPU_KV_CACHE_GIB = 1.0
GIB = 1 << 30


class JudgeStartError(RuntimeError):
    """A judge's engine could not start; the message names the model and the cause."""


@dataclass(frozen=True)
class JudgeRequest:
    """One chat turn for the judge: text and images in the order shown."""

    parts: tuple[str | np.ndarray, ...]  # text, or a uint8 [H, W, 3] image
    seed: int | None = None  # sampling seed: the same request samples the same reply (None: the engine's stream)

    @property
    def images(self) -> list[np.ndarray]:
        return [p for p in self.parts if isinstance(p, np.ndarray)]


@dataclass(frozen=True)
class Generation:
    """How replies are generated. json_schema or regex (at most one) constrains them: structured outputs."""

    max_new_tokens: int
    temperature: float | None = None  # None: the model's own generation defaults (as the authors serve); 0: greedy
    json_schema: dict | None = None
    regex: str | None = None
    thinking: bool = False  # chat template's enable_thinking (Qwen3.5 judges are served with it off)


class JudgeBackend(Protocol):
    retry_delay_s: float  # pause before retrying requests that failed (not those merely unparsed)

    def generate(self, requests: list[JudgeRequest], generation: Generation) -> list[str | None]:
        """One reply per request (None: the request failed). Never raises."""
        ...

    def close(self) -> None: ...


def to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(image))


def jpeg_bytes(image: np.ndarray) -> bytes:
    """A uint8 [H, W, 3] image as JPEG, quality 95 (the authors' encoding)."""
    buffer = io.BytesIO()
    to_pil(image).convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def jpeg_data_url(image: np.ndarray) -> str:
    """A uint8 [H, W, 3] image as a base64 JPEG data URL (the OpenAI chat API's image_url)."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(image)).decode("ascii")


def jpeg_decoded(image: np.ndarray) -> Image.Image:
    """The image a server decodes from `jpeg_data_url(image)`: what in-process engines are given."""
    decoded = Image.open(io.BytesIO(jpeg_bytes(image)))
    decoded.load()
    return decoded


def chat_template_kwargs(generation: Generation) -> dict:
    return {"enable_thinking": generation.thinking}


def prepare_vllm_environment() -> None:
    """Before vLLM starts: ask for an in-process engine; prepare torchvision in the children vLLM spawns."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(CHILD_SITE) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(CHILD_SITE)] + [p for p in paths if p])


def engine_dtype() -> str:
    """The judge engine's dtype: the checkpoint's ("auto") where the hardware computes in it; float32 on a CPU
    without bfloat16 instructions (vLLM-CPU casts to bfloat16 by default, and an AVX2-only CPU then runs its
    linear layers on a slow fallback: 13x slower than float32, measured with the tiny judge)."""
    import torch

    if torch.cuda.is_available() or torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "auto"
    return "float32"


# ----------------------------------------------------------------------------------------------- vLLM engine
@dataclass
class _Job:
    """One `generate` call waiting for the engine."""

    conversations: list
    params: list  # [vllm.SamplingParams] one per conversation
    template_kwargs: dict
    replies: list[str | None] | None = None


@dataclass
class _Engine:
    """A shared `vllm.LLM` that runs the requests of concurrent callers together.

    Calls queue their requests; whoever holds the engine next takes everything queued and sends it as one
    `llm.chat` (vLLM batches it continuously), so groups scored from several threads share engine steps
    instead of waiting for each other under a lock.
    """

    llm: object  # vllm.LLM
    users: int
    pending: list[_Job] = field(default_factory=list)
    queue_lock: threading.Lock = field(default_factory=threading.Lock)
    engine_lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, job: _Job) -> list[str | None]:
        with self.queue_lock:
            self.pending.append(job)
        with self.engine_lock:  # a job taken by an earlier holder is done before that holder lets go
            with self.queue_lock:
                batch, self.pending = self.pending, []
            by_kwargs: dict[bool, list[_Job]] = {}
            for queued in batch:
                by_kwargs.setdefault(queued.template_kwargs["enable_thinking"], []).append(queued)
            for jobs in by_kwargs.values():
                self._chat(jobs)
        assert job.replies is not None
        return job.replies

    def _chat(self, jobs: list[_Job]) -> None:
        conversations = [c for job in jobs for c in job.conversations]
        params = [p for job in jobs for p in job.params]
        try:
            outputs = self.llm.chat(  # type: ignore[attr-defined]
                conversations, params, use_tqdm=False, chat_template_kwargs=jobs[0].template_kwargs
            )
            replies = [o.outputs[0].text if o.outputs else None for o in outputs]
        except Exception:
            log.exception("vLLM engine failed on a batch of %d judge requests", len(conversations))
            replies = [None] * len(conversations)
        start = 0
        for job in jobs:
            job.replies = replies[start : start + len(job.conversations)]
            start += len(job.conversations)


_ENGINES: dict[tuple, _Engine] = {}
_ENGINES_LOCK = threading.Lock()


class VllmBackend:
    """An in-process `vllm.LLM`; a batch of requests goes to the engine together with those of concurrent calls.

    Judges on the same model share one engine (reference-counted), so swapping Flex for Think on one model
    does not reload it, and the groups in flight of both specs share its batches.
    """

    retry_delay_s = 0.0

    def __init__(self, model: str, max_images: int, kv_cache_gib: float | None = None) -> None:
        self.key = (model, max_images)  # an engine shared by several specs keeps the first one's kv_cache_gib
        with _ENGINES_LOCK:
            if self.key not in _ENGINES:
                _ENGINES[self.key] = _Engine(llm=_start_engine(model, max_images, kv_cache_gib), users=0)
            _ENGINES[self.key].users += 1
            self.engine = _ENGINES[self.key]
        self.closed = False

    def generate(self, requests: list[JudgeRequest], generation: Generation) -> list[str | None]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = None
        if generation.json_schema is not None:
            structured = StructuredOutputsParams(json=generation.json_schema)
        elif generation.regex is not None:
            structured = StructuredOutputsParams(regex=generation.regex)
        settings = dict(self.engine.llm.model_config.get_diff_sampling_param())  # type: ignore[attr-defined]
        settings |= {"max_tokens": generation.max_new_tokens, "structured_outputs": structured}
        if generation.temperature is not None:
            settings["temperature"] = generation.temperature
        # the model's generation defaults, then ours, then each request's seed
        params = [SamplingParams.from_optional(**settings, seed=r.seed) for r in requests]
        try:
            conversations = engine_conversations(requests)
        except Exception:
            log.exception("could not encode %d judge requests", len(requests))
            return [None] * len(requests)
        return self.engine.run(_Job(conversations, params, chat_template_kwargs(generation)))

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


def engine_conversations(requests: list[JudgeRequest]) -> list[list[dict]]:
    """The `llm.chat` conversations of the in-process engine: one user turn per request, parts in order, each
    image as the decoded JPEG (what a server decodes). An image shared by requests (a sample in all its pairs)
    is decoded once."""
    decoded: dict[int, Image.Image] = {}  # by id() of the array: all are alive while the requests are

    def part(p: str | np.ndarray) -> dict:
        if isinstance(p, str):
            return {"type": "text", "text": p}
        if id(p) not in decoded:
            decoded[id(p)] = jpeg_decoded(p)
        return {"type": "image_pil", "image_pil": decoded[id(p)]}

    return [[{"role": "user", "content": [part(p) for p in r.parts]}] for r in requests]


def kv_cache_bytes(kv_cache_gib: float | None) -> int | None:
    """The KV cache an engine reserves: the spec's, else CPU_KV_CACHE_GIB on CPU; None leaves GPUs to vLLM's
    memory share. (vLLM's own VLLM_CPU_KVCACHE_SPACE, when set, still wins on CPU.)"""
    import torch

    if kv_cache_gib is None and torch.cuda.is_available():
        return None
    return int((kv_cache_gib or CPU_KV_CACHE_GIB) * GIB)


def _start_engine(model: str, max_images: int, kv_cache_gib: float | None):
    """A `vllm.LLM` for the judge, or a JudgeStartError naming the model and the cause."""
    prepare_vllm_environment()
    try:
        return _new_llm(model, max_images, kv_cache_gib)
    except Exception as err:
        first = next((line for line in str(err).splitlines() if line.strip()), "")
        cause = f"{type(err).__name__}: {first}"
        raise JudgeStartError(f"the vLLM engine for judge model {model} did not start: {cause}") from err


def judge_max_model_len(model: str) -> int:
    """JUDGE_MAX_MODEL_LEN, or the model's own context where that is shorter."""
    from transformers import AutoConfig

    own = getattr(AutoConfig.from_pretrained(model).get_text_config(), "max_position_embeddings", None)
    return min(JUDGE_MAX_MODEL_LEN, own or JUDGE_MAX_MODEL_LEN)


def _new_llm(model: str, max_images: int, kv_cache_gib: float | None):
    import torch
    import vllm

    return vllm.LLM(
        model=model,
        max_model_len=judge_max_model_len(model),
        kv_cache_memory_bytes=kv_cache_bytes(kv_cache_gib),
        enforce_eager=not torch.cuda.is_available(),  # CUDA graphs on GPUs; eager on CPU (fast start)
        dtype=engine_dtype(),
        limit_mm_per_prompt={"image": max_images},
        enable_prefix_caching=True,  # pairs with the same first sample share its image tokens
        max_num_seqs=MAX_BATCH_REQUESTS,
        max_num_batched_tokens=MAX_BATCH_TOKENS,
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

    At most `max_concurrency` requests are in flight (a thread pool) over kept-alive connections of one client.
    Images travel as base64 JPEG data URLs. A JSON schema goes as `response_format` (OpenAI API); a regex as
    vLLM's `structured_outputs` extension; thinking as `chat_template_kwargs`. No temperature is sent unless
    the generation sets one (the server's model defaults apply, as the authors serve).
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
            else {"type": "image_url", "image_url": {"url": jpeg_data_url(p)}}
            for p in request.parts
        ]
        body: dict = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": generation.max_new_tokens,
            "chat_template_kwargs": chat_template_kwargs(generation),
        }
        if generation.temperature is not None:
            body["temperature"] = generation.temperature
        if request.seed is not None:
            body["seed"] = request.seed
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
        self.lock = threading.Lock()

    def generate(self, requests: list[JudgeRequest], generation: Generation) -> list[str | None]:
        with self.lock:
            return [self._one(r, generation) for r in requests]

    def _one(self, request: JudgeRequest, generation: Generation) -> str | None:
        import torch

        try:
            content = [{"type": "text", "text": p} if isinstance(p, str) else {"type": "image"} for p in request.parts]
            text = self.processor.apply_chat_template(
                [{"role": "user", "content": content}],
                add_generation_prompt=True,
                tokenize=False,
                **chat_template_kwargs(generation),
            )
            images = [jpeg_decoded(i) for i in request.images] or None
            inputs = self.processor(text=[text], images=images, return_tensors="pt").to(self.device)
            sampling = {}  # temperature None: the model's generation config decides
            if generation.temperature is not None:
                sampling["do_sample"] = generation.temperature > 0
            if generation.temperature:
                sampling["temperature"] = generation.temperature
            with torch.no_grad(), torch.random.fork_rng(devices=[self.device] if self.device == "cuda" else []):
                if request.seed is not None:
                    torch.manual_seed(request.seed)
                out = self.model.generate(**inputs, max_new_tokens=generation.max_new_tokens, **sampling)
            return self.processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        except Exception:
            log.exception("transformers judge failed on one request")
            return None

    def close(self) -> None:
        self.model = None
