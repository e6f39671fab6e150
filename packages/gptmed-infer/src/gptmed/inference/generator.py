"""``TextGenerator``: answers questions with an exported bundle (onnxruntime) or a torch model.

::

    gen = TextGenerator.from_bundle("bundle/")                 # no torch involved
    gen = TextGenerator(model=model, tokenizer_path="tok.model")  # a GPTTransformer (torch backend)
    gen.generate("How do I reset my password?", max_length=80, temperature=0.6)

The question goes through the template recorded in the bundle (or checkpoint), the answer comes
back without the prompt, stops at EOS or a stop string, and ``max_length`` counts generated
tokens. Sampling is one numpy implementation (:mod:`gptmed.inference.sampling`) for both
backends, so ``temperature=0`` gives the same tokens on onnxruntime and torch. A generator is
safe to share between threads: every call keeps its own KV cache and random generator.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gptmed.core import (
    DEFAULT_TEMPLATE,
    SPECIAL_IDS,
    ConfigError,
    GenerationConfig,
    ManifestError,
    ModelConfig,
    PromptTemplate,
    SpecialIds,
    TokenizerError,
    sha256_file,
)
from gptmed.inference.backends import Backend, OnnxBackend
from gptmed.inference.bundle import load_bundle
from gptmed.inference.sampling import Sampler, make_config
from gptmed.inference.streaming import AnswerStream

__all__ = ["GenerationResult", "TextGenerator", "load_tokenizer"]

_log = logging.getLogger(__name__)


def recorded_tokenizer(recorded: str | os.PathLike[str], sha256: str, model: str) -> Path:
    """The tokenizer a checkpoint recorded (path + sha256): that file, or, when it was retrained
    since, the copy ``train_tokenizer`` kept beside it (``PREFIX.<sha256[:12]>.model``)."""
    from gptmed.tokenizer import kept_tokenizer_path

    path = Path(recorded)
    if path.is_file() and (not sha256 or sha256_file(path) == sha256):
        return path
    if sha256 and (kept := kept_tokenizer_path(path, sha256)).is_file():
        _log.info("using %s: the tokenizer %s was retrained since %s was trained", kept, path, model)
        return kept
    if not path.is_file():
        raise TokenizerError(
            f"the tokenizer recorded with {model} is missing: {path}"
            + (f" (sha256 {sha256[:12]}...)" if sha256 else ""),
            hint="if it moved, pass --tokenizer with that file; a newly trained tokenizer gives other ids "
            "and will not match",
        )
    return path  # a different file: the sha256 check after loading names both


def load_tokenizer(path: str | os.PathLike[str], template: PromptTemplate = DEFAULT_TEMPLATE) -> Any:
    """The gptmed ``Tokenizer`` at ``path`` (a SentencePiece ``.model``)."""
    from gptmed.tokenizer import Tokenizer

    return Tokenizer(path, template=template)


class PromptError(ConfigError):
    """A prompt that cannot run (empty, no tokens, bad ids, too long); ``row`` is its index in the
    call (0-based). The message numbers it from 1 ("prompt 2 is empty"), or says "prompt" alone
    when the call had one (``count``)."""

    def __init__(self, row: int, problem: str, count: int = 0) -> None:
        self.row, self.problem = row, problem
        super().__init__(self.about("prompt" if count == 1 else f"prompt {row + 1}"))

    def about(self, subject: str) -> str:
        """The message with another name for the prompt ("question 3 ('What...')")."""
        joined = self.problem.startswith(("has ", "is "))
        return f"{subject} {self.problem}" if joined else f"{subject}: {self.problem}"


@dataclass(frozen=True)
class GenerationResult:
    """One answer with its token ids and why it ended (``eos``, ``stop`` or ``length``)."""

    text: str
    token_ids: list[int]  # generated ids (EOS excluded)
    prompt_tokens: int
    finish_reason: str


class TextGenerator:
    """Generates answers from a bundle (onnxruntime) or a torch ``GPTTransformer``.

    ``model``: a ``GPTTransformer`` (torch backend), or a path: a bundle folder, its ``model.onnx``
    (onnxruntime, no torch), or a ``.pt`` checkpoint (torch backend). ``tokenizer_path`` is
    required with a torch model; a bundle brings its own tokenizer.
    """

    def __init__(
        self,
        model: Any = None,
        tokenizer_path: str | os.PathLike[str] | None = None,
        *,
        template: PromptTemplate | None = None,
        special_ids: SpecialIds | None = None,
        generation: GenerationConfig | None = None,
        device: str | None = None,
        variant: str | None = None,
        threads: int | None = None,
        verify: bool = True,
    ) -> None:
        self.template = template or DEFAULT_TEMPLATE
        self.special_ids = special_ids or SPECIAL_IDS
        self.defaults = generation or GenerationConfig()
        self.source = ""
        tokenizer_sha = ""
        if model is None:
            raise ValueError(
                "TextGenerator needs model= (a GPTTransformer, a bundle folder, model.onnx or a .pt checkpoint)"
            )
        if isinstance(model, (str, os.PathLike)):
            path = Path(model)
            self.source = str(path)
            if path.suffix == ".pt" or (path.is_file() and path.suffix not in (".onnx", ".json")):
                from gptmed.inference.export.torch_backend import TorchBackend, load_checkpoint_model

                torch_model, ckpt_manifest = load_checkpoint_model(path, device or "cpu")
                self.backend: Backend = TorchBackend(torch_model)
                if ckpt_manifest is not None:
                    self.template = template or ckpt_manifest.template
                    self.special_ids = special_ids or ckpt_manifest.special_ids
                    tokenizer_sha = ckpt_manifest.tokenizer_sha256
                    recorded = ckpt_manifest.extra.get("tokenizer_path")
                    if tokenizer_path is None and recorded:
                        tokenizer_path = recorded_tokenizer(recorded, tokenizer_sha, str(path))
            else:
                bundle = load_bundle(path, variant=variant, verify=verify)
                man = bundle.manifest
                self.template = template or man.template
                self.special_ids = special_ids or man.special_ids
                self.defaults = generation or man.generation
                tokenizer_sha = man.tokenizer_sha256
                if tokenizer_path is None:
                    tokenizer_path = bundle.tokenizer_path
                self.backend = OnnxBackend(bundle, threads=threads)
                self.bundle = bundle
        elif hasattr(model, "prefill") and hasattr(model, "decode"):
            self.backend = model  # a ready backend
        else:
            from gptmed.inference.export.torch_backend import TorchBackend

            self.backend = TorchBackend(model, device=device)
            self.source = type(model).__name__
        if tokenizer_path is None:
            raise TokenizerError(
                "no tokenizer given and none recorded with the model",
                hint="pass tokenizer_path= (--tokenizer), the .model file the model was trained with",
            )
        self.tokenizer = load_tokenizer(tokenizer_path, self.template)
        if tokenizer_sha and self.tokenizer.sha256 != tokenizer_sha:
            raise ManifestError(
                f"tokenizer {tokenizer_path} (sha256 {self.tokenizer.sha256[:12]}...) is not the one the model "
                f"was trained with (sha256 {tokenizer_sha[:12]}...)",
                where=str(tokenizer_path),
                hint="pass the tokenizer recorded with the model (--tokenizer)",
            )
        if self.tokenizer.vocab_size > self.config.vocab_size:
            raise ManifestError(
                f"tokenizer has {self.tokenizer.vocab_size} ids, the model only {self.config.vocab_size}",
                where=str(tokenizer_path),
                hint="use the tokenizer the model was trained with",
            )

    # ------------------------------------------------------------------------------ constructors
    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike[str],
        *,
        variant: str | None = None,
        threads: int | None = None,
        verify: bool = True,
    ) -> TextGenerator:
        """A generator over an exported bundle (folder or ``.onnx`` file); onnxruntime only."""
        return cls(model=path, variant=variant, threads=threads, verify=verify)

    @property
    def config(self) -> ModelConfig:
        return self.backend.config

    # ------------------------------------------------------------------------------ encoding
    def encode_prompt(self, question: str) -> list[int]:
        """``[bos] + encode(template.render_prompt(question))``."""
        if not isinstance(question, str):
            raise TypeError(f"prompt must be a str, got {type(question).__name__}")
        if not question.strip():
            raise ConfigError("prompt is empty; pass a question")
        return [self.special_ids.bos, *self.tokenizer.encode(self.template.render_prompt(question))]

    def _encode_all(self, prompts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode_prompt` of each; an empty one is a :class:`PromptError` naming it."""
        out = []
        for n, question in enumerate(prompts):
            if isinstance(question, str) and not question.strip():
                raise PromptError(n, "is empty; pass a question", len(prompts))
            out.append(self.encode_prompt(question))
        return out

    def _check_ids(self, prompts: Sequence[Sequence[int]], cfg: GenerationConfig) -> None:
        vocab, ctx = self.config.vocab_size, self.config.max_seq_len
        count = len(prompts)
        for n, ids in enumerate(prompts):
            if len(ids) == 0:
                raise PromptError(n, "has no tokens", count)
            arr = np.asarray(ids)
            if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):  # 5.5 would become 5
                raise PromptError(n, f"token ids must be integers, got an array of {arr.dtype}", count)
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= vocab:
                raise PromptError(n, f"token ids must be in [0, {vocab}), got min {lo}, max {hi}", count)
            if len(ids) >= ctx:
                raise PromptError(
                    n,
                    f"has {len(ids)} tokens: it fills the model's context of {ctx} tokens; shorten it",
                    count,
                )
            if len(ids) + cfg.max_length > ctx:
                raise PromptError(
                    n,
                    f"has {len(ids)} tokens + max_length {cfg.max_length} = {len(ids) + cfg.max_length} "
                    f"> the model's context of {ctx} tokens; shorten the prompt or lower max_length "
                    f"(at most {ctx - len(ids)} here)",
                    count,
                )

    # ------------------------------------------------------------------------------ the loop
    def generate_ids(
        self,
        prompts: Sequence[Sequence[int]],
        config: GenerationConfig | None = None,
        *,
        ignore_eos: bool = False,
        **overrides: Any,
    ) -> list[list[int]]:
        """Generated ids per prompt (token ids in, token ids out; EOS ends a row and is dropped).

        Stop strings do not apply here (they are text); use :meth:`generate` for answers.
        ``ignore_eos`` keeps going past EOS (benchmarks: exactly ``max_length`` tokens per row).
        """
        cfg = make_config(config or self.defaults, **overrides)
        out: list[list[int]] = [[] for _ in prompts]
        events = self._token_events([list(p) for p in prompts], cfg, lambda _r: False, ignore_eos=ignore_eos)
        for row, token in events:
            out[row].append(token)
        return out

    def _token_events(
        self, prompts: list[list[int]], cfg: GenerationConfig, is_done: Any, ignore_eos: bool = False
    ) -> Iterator[tuple[int, int]]:
        """Yield ``(row, token)`` for every generated token until each row hits EOS,
        ``is_done(row)`` turns true, or ``max_length`` tokens were generated. Left-pads the batch."""
        self._check_ids(prompts, cfg)
        batch = len(prompts)
        width = max(len(p) for p in prompts)
        pad = self.special_ids.pad
        ids = np.full((batch, width), pad, dtype=np.int64)  # (B, T) left padded
        mask = np.zeros((batch, width), dtype=np.int64)
        for row, p in enumerate(prompts):
            ids[row, width - len(p) :] = p
            mask[row, width - len(p) :] = 1
        sampler = Sampler(cfg, batch, self.config.vocab_size, prompts)
        eos = -1 if ignore_eos else self.special_ids.eos
        live = np.ones(batch, dtype=bool)
        logits, state = self.backend.prefill(ids, mask, capacity=width + cfg.max_length)  # (B, V)
        for step in range(cfg.max_length):
            tokens = sampler.next_tokens(logits)  # (B,)
            for row in (int(r) for r in np.flatnonzero(live)):
                tok = int(tokens[row])
                if tok == eos:
                    live[row] = False
                    continue
                yield row, tok
                if is_done(row):
                    live[row] = False
            if not live.any() or step == cfg.max_length - 1:
                return
            tokens = np.where(live, tokens, pad)
            logits = self.backend.decode(state, tokens)

    def _answers(
        self, ids: list[list[int]], cfg: GenerationConfig, cancel: Callable[[], bool] | None = None
    ) -> Iterator[tuple[int, str, AnswerStream | None]]:
        """Yield ``(row, text_piece, None)`` as text becomes final, then ``(row, rest, stream)`` per
        row, for prompts already encoded (:meth:`_encode_all`).

        ``cancel()`` is asked after every token; when it returns true every row ends there."""
        streams = [AnswerStream(self.tokenizer.decode, cfg.stop) for _ in ids]
        counts = [0] * len(ids)

        def done(row: int) -> bool:
            return streams[row].stopped or (cancel is not None and cancel())

        for row, token in self._token_events(ids, cfg, done):
            counts[row] += 1
            piece = streams[row].push(token)
            if piece:
                yield row, piece, None
        for row, stream in enumerate(streams):
            yield row, stream.finish(), stream

    def _config(
        self, config: GenerationConfig | None, params: dict[str, Any], prompt_lens: list[int]
    ) -> GenerationConfig:
        """The call's config; a *default* max_length is trimmed to the room the context leaves.

        An explicit ``max_length`` that does not fit is an error (raised before the run).
        """
        cfg = make_config(config or self.defaults, **params)
        if config is None and params.get("max_length") is None and params.get("max_tokens") is None:
            room = self.config.max_seq_len - max(prompt_lens, default=0)
            if 0 < room < cfg.max_length:
                cfg = cfg.replace(max_length=room)
        return cfg

    # ------------------------------------------------------------------------------ public API
    def generate(
        self,
        prompt: str,
        max_length: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        *,
        repetition_penalty: float | None = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        no_repeat_ngram_size: int | None = None,
        stop: Sequence[str] | str | None = None,
        seed: int | None = None,
        config: GenerationConfig | None = None,
    ) -> str:
        """The answer to ``prompt`` (a question; the template is applied here), without the prompt.

        Unset parameters come from the bundle's generation defaults (temperature 0.7, top_k 50,
        top_p 0.9, max_length 100 new tokens, frequency_penalty 0.5). ``temperature=0`` is greedy.
        """
        return self.generate_batch(
            [prompt],
            max_length=max_length,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty,
            no_repeat_ngram_size=no_repeat_ngram_size,
            stop=stop,
            seed=seed,
            config=config,
        )[0]

    def generate_batch(
        self, prompts: Sequence[str], config: GenerationConfig | None = None, **params: Any
    ) -> list[str]:
        """Answers to several prompts in one left-padded, masked batch (same order as ``prompts``)."""
        return [r.text for r in self.generate_results(prompts, config=config, **params)]

    def generate_results(
        self,
        prompts: Sequence[str],
        config: GenerationConfig | None = None,
        *,
        cancel: Callable[[], bool] | None = None,
        **params: Any,
    ) -> list[GenerationResult]:
        """Like :meth:`generate_batch` with token ids, prompt sizes and finish reasons.

        ``cancel`` (optional) is called after every token; returning true ends every row there."""
        if isinstance(prompts, str):
            raise TypeError("generate_batch() takes a list of prompts, not a str")
        if not prompts:
            return []
        ids = self._encode_all(prompts)
        prompt_lens = [len(row) for row in ids]
        cfg = self._config(config, params, prompt_lens)
        texts = [""] * len(prompts)
        results: list[GenerationResult | None] = [None] * len(prompts)
        for row, piece, stream in self._answers(ids, cfg, cancel):
            texts[row] += piece
            if stream is not None:
                n = len(stream.ids)
                reason = "stop" if stream.stopped else ("length" if n >= cfg.max_length else "eos")
                results[row] = GenerationResult(texts[row], stream.ids, prompt_lens[row], reason)
        return [r for r in results if r is not None]

    def stream(
        self,
        prompt: str,
        max_length: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        *,
        cancel: Callable[[], bool] | None = None,
        **params: Any,
    ) -> Iterator[str]:
        """The answer as text pieces while it is generated; each piece ends on a whole character.

        ``cancel`` (optional) is called after every token; returning true ends generation there
        (the server uses it when a client disconnects)."""
        params.update(max_length=max_length, temperature=temperature, top_k=top_k, top_p=top_p)
        ids = self._encode_all([prompt])
        cfg = self._config(params.pop("config", None), params, [len(ids[0])])
        for _row, piece, _stream in self._answers(ids, cfg, cancel):
            if piece:
                yield piece

    def __repr__(self) -> str:
        return f"TextGenerator({self.source!r}, backend={self.backend.name})"
