"""Plain Hugging Face `transformers` backend: hook points are module paths."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from saeops.api.common import ModelSpec
from saeops.runtime.lm.base import LanguageModel, StopForward, UnknownHookPointError, resolve_local_path
from saeops.runtime.lm.tl_backend import checkpoint_has_lm_head

INPUT_SUFFIX = ":input"


def _first(x: Any) -> Any:
    return x[0] if isinstance(x, tuple) else x


class HuggingFaceModel(LanguageModel):
    """`transformers.AutoModel` (or `AutoModelForCausalLM` when the checkpoint has an LM head).

    A hook point is a module path from `named_modules()`: `encoder.layer.3` is that module's
    output (first element when it returns a tuple); `encoder.layer.3:input` is its input.
    """

    def __init__(self, spec: ModelSpec, tokenizer: Any, device: torch.device, source: Any = None) -> None:
        """`source`: the ResolvedSource of `spec.path` (resolved here when not given)."""
        super().__init__(spec, tokenizer, device, source)
        from transformers import AutoModel, AutoModelForCausalLM

        assert spec.path is not None
        path = source.path if source is not None else resolve_local_path(spec.path)
        self.path = path
        self._has_head = checkpoint_has_lm_head(path)
        cls = AutoModelForCausalLM if self._has_head else AutoModel
        try:
            self.model = cls.from_pretrained(str(path), dtype=self.dtype)
        except ValueError:  # an LM-head architecture AutoModelForCausalLM does not map (masked LM)
            self.model = AutoModel.from_pretrained(str(path), dtype=self.dtype)
            self._has_head = False
        self.model.to(device).eval()
        self._modules = dict(self.model.named_modules())
        self._modules.pop("", None)

    @property
    def backend(self) -> str:
        return "huggingface"

    @property
    def has_lm_head(self) -> bool:
        return self._has_head

    @property
    def max_context(self) -> int | None:
        n = getattr(self.model.config, "max_position_embeddings", None)
        return int(n) if n else None

    @property
    def embedding_rows(self) -> int | None:
        emb = self.model.get_input_embeddings()
        return int(emb.num_embeddings) if isinstance(emb, torch.nn.Embedding) else None

    def hook_points(self) -> list[str]:
        names = list(self._modules)
        return names + [n + INPUT_SUFFIX for n in names]

    def _suggestion_pool(self) -> list[str]:
        return list(self._modules)

    def hook_map(self) -> Any:
        """TransformerLens <-> Hugging Face names from config.json (None: no TransformerLens adapter)."""
        if not hasattr(self, "_hook_map"):
            from saeops.runtime.lm.hookmap import hook_map_of_config

            self._hook_map = hook_map_of_config(self.path)
        return self._hook_map

    def equivalent_hook(self, name: str) -> str | None:
        if not name.startswith(("blocks.", "hook_", "embed", "pos_embed", "ln_final", "unembed")):
            return None  # not a TransformerLens name: no need to import TransformerLens
        hm = self.hook_map()
        return None if hm is None else hm.hf_name(name, set(self._modules))

    def has_hook_point(self, name: str) -> bool:
        return name.removesuffix(INPUT_SUFFIX) in self._modules

    def _module(self, name: str) -> tuple[torch.nn.Module, bool]:
        base = name.removesuffix(INPUT_SUFFIX)
        if base not in self._modules:
            raise UnknownHookPointError(name, self._suggestion_pool(), self.spec.name, backend=self.backend,
                                        equivalent=self.equivalent_hook(name))
        return self._modules[base], name.endswith(INPUT_SUFFIX)

    def _call(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None) -> Any:
        if attention_mask is None:
            attention_mask = torch.ones_like(tokens)
        try:
            return self.model(input_ids=tokens, attention_mask=attention_mask)
        except StopForward:
            return None

    def _register(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor | None]) -> Any:
        """Attach `fn(activation) -> replacement or None` to the module output or input."""
        module, is_input = self._module(name)
        if is_input:
            def pre_hook(mod: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
                if args:
                    new = fn(args[0])
                    return None if new is None else ((new, *args[1:]), kwargs)
                key = "hidden_states" if "hidden_states" in kwargs else next(
                    k for k, v in kwargs.items() if isinstance(v, torch.Tensor))
                new = fn(kwargs[key])
                return None if new is None else (args, {**kwargs, key: new})

            return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

        def hook(mod: torch.nn.Module, args: tuple, output: Any) -> Any:
            new = fn(_first(output))
            if new is None:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return module.register_forward_hook(hook)

    def activations(
        self, tokens: torch.Tensor, hook_points: Sequence[str], attention_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Activations at `hook_points` [B, T, D]; StopForward ends the forward after the last one."""
        self.check_hook_points(hook_points)
        tokens, attention_mask = self._prepare(tokens, attention_mask)
        batch, seq = tokens.shape
        wanted = list(dict.fromkeys(hook_points))
        got: dict[str, torch.Tensor] = {}

        def capture(name: str) -> Callable[[torch.Tensor], None]:
            def fn(x: torch.Tensor) -> None:
                got[name] = x
                if len(got) == len(wanted):
                    raise StopForward

            return fn

        handles = [self._register(n, capture(n)) for n in wanted]
        try:
            with torch.inference_mode():
                self._call(tokens, attention_mask)
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in wanted if n not in got]
        if missing:
            raise RuntimeError(f"hook points {missing} did not fire during the forward pass")
        return {n: self._per_token(n, got[n], batch, seq) for n in hook_points}

    @staticmethod
    def _output(out: Any) -> torch.Tensor:
        logits = getattr(out, "logits", None)
        return logits if logits is not None else out.last_hidden_state

    def logits(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        tokens, attention_mask = self._prepare(tokens, attention_mask)
        with torch.inference_mode():
            return self._output(self._call(tokens, attention_mask))

    def forward_with_replacement(
        self,
        tokens: torch.Tensor,
        hook_point: str,
        fn: Callable[[torch.Tensor], torch.Tensor],
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        tokens, attention_mask = self._prepare(tokens, attention_mask)
        batch, seq = tokens.shape

        def replace(x: torch.Tensor) -> torch.Tensor:
            return fn(self._per_token(hook_point, x, batch, seq)).reshape(x.shape).to(x.dtype)

        handle = self._register(hook_point, replace)
        try:
            with torch.inference_mode():
                return self._output(self._call(tokens, attention_mask))
        finally:
            handle.remove()

    def unembed(self) -> torch.Tensor | None:
        if not self._has_head:
            return None
        emb = self.model.get_output_embeddings()
        return None if emb is None else emb.weight.detach().T
