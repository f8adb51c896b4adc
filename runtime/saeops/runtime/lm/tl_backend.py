"""TransformerLens 4.x backend: a TransformerBridge with TransformerLens hook names."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from saeops.api.common import ModelSpec
from saeops.runtime.lm.base import LanguageModel, StopForward, resolve_local_path
from saeops.runtime.lm.tokenizer import ByteTokenizer

LM_HEAD_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForMaskedLM", "ForConditionalGeneration")


def checkpoint_has_lm_head(path: Path) -> bool:
    """Whether the checkpoint's own architecture carries a trained unembedding.

    The bridge wraps an encoder checkpoint such as MiniLM (`BertModel`) in a masked-LM class,
    so it exposes an `unembed` whose transform layer was never trained; we must not treat
    those outputs as logits.
    """
    try:
        archs = json.loads((path / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        return False
    return any(a.endswith(LM_HEAD_SUFFIXES) for a in archs)


class TransformerLensModel(LanguageModel):
    """A model wrapped by `transformer_lens.model_bridge.TransformerBridge`.

    Hook names are TransformerLens' (`blocks.3.hook_resid_post`, ...), aliases included.
    For BERT-like encoders (MiniLM) `blocks.L.hook_out` == `blocks.L.hook_resid_post` is the
    HF `encoder.layer.L` output (= `hidden_states[L + 1]`), and `blocks.5.hook_out` is
    `last_hidden_state`.
    """

    def __init__(self, spec: ModelSpec, tokenizer: Any, device: torch.device, source: Any = None) -> None:
        """`source`: the ResolvedSource of `spec.path` (resolved here when not given)."""
        super().__init__(spec, tokenizer, device, source)
        from transformer_lens.model_bridge import TransformerBridge

        self._vocab_modulo: int | None = None
        if spec.native is not None:
            from transformer_lens.config import TransformerBridgeConfig

            n = spec.native
            cfg = TransformerBridgeConfig(
                n_layers=n.n_layers, d_model=n.d_model, n_ctx=n.n_ctx, d_head=n.d_head, n_heads=n.n_heads,
                d_vocab=n.d_vocab, act_fn=n.act_fn, d_mlp=n.d_mlp, seed=n.seed, dtype=self.dtype,
            )
            # The config's seed reseeds the global RNG; fork it so loading a model does not
            # change the caller's random stream (shuffling, SAE init).
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(n.seed)
                self.bridge = TransformerBridge.boot_native(cfg, device=str(device), dtype=self.dtype)
            self._vocab_modulo = n.d_vocab
            self._has_head = True
        else:
            assert spec.path is not None
            path = source.path if source is not None else resolve_local_path(spec.path)
            # A copy: the bridge's tokenizer setup adds a BOS (= EOS) to tokenizers that have none,
            # which would frame windows differently from the huggingface backend.
            hf_tok = None if isinstance(tokenizer, ByteTokenizer) else copy.deepcopy(tokenizer)
            self.bridge = TransformerBridge.boot_transformers(
                str(path), device=str(device), dtype=self.dtype, tokenizer=hf_tok
            )
            self._has_head = checkpoint_has_lm_head(path)
        self.bridge.eval()
        self._n_layers = int(self.bridge.cfg.n_layers)
        self._names = list(self.bridge.hook_dict)
        self._name_set = set(self._names)

    @property
    def backend(self) -> str:
        return "transformer-lens"

    @property
    def has_lm_head(self) -> bool:
        return self._has_head

    @property
    def max_context(self) -> int | None:
        return int(self.bridge.cfg.n_ctx) if getattr(self.bridge.cfg, "n_ctx", None) else None

    @property
    def embedding_rows(self) -> int | None:
        # Native models take ids modulo d_vocab (spec contract): any id is fine.
        return None if self._vocab_modulo is not None else int(self.bridge.cfg.d_vocab)

    def hook_points(self) -> list[str]:
        return list(self._names)

    def hook_map(self) -> Any:
        """TransformerLens <-> Hugging Face names (None for native models: no HF modules)."""
        if self.spec.native is not None:
            return None
        if not hasattr(self, "_hook_map"):
            from saeops.runtime.lm.hookmap import hook_map_of_bridge

            self._hook_map = hook_map_of_bridge(self.bridge)
        return self._hook_map

    def equivalent_hook(self, name: str) -> str | None:
        hm = self.hook_map()
        return None if hm is None else hm.tl_name(name)

    def has_hook_point(self, name: str) -> bool:
        return name in self._name_set

    def _prepare(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[
        torch.Tensor, torch.Tensor | None
    ]:
        tokens, attention_mask = super()._prepare(tokens, attention_mask)
        if self._vocab_modulo is not None:
            # Native models take any tokenizer: ids beyond d_vocab wrap around (spec contract).
            tokens = tokens % self._vocab_modulo
        return tokens, attention_mask

    def _run(self, tokens: torch.Tensor, hooks: list[tuple[str, Callable]], attention_mask: torch.Tensor | None,
             return_type: str | None) -> Any:
        kwargs: dict[str, Any] = {}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        try:
            return self.bridge.run_with_hooks(tokens, fwd_hooks=hooks, return_type=return_type, **kwargs)
        except StopForward:
            return None

    def activations(
        self, tokens: torch.Tensor, hook_points: Sequence[str], attention_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Activations at `hook_points`, [B, T, D] in the model dtype.

        Rather than `run_with_cache(stop_at_layer=...)`, which still runs the unembedding when
        the last needed hook is in the final block (MiniLM: a 30522-wide matmul, 3x the cost of
        the whole encoder), a hook raises StopForward as soon as the last requested activation
        is captured, which stops at the exact hook, in any block.
        """
        self.check_hook_points(hook_points)
        tokens, attention_mask = self._prepare(tokens, attention_mask)
        batch, seq = tokens.shape
        wanted = list(dict.fromkeys(hook_points))
        got: dict[str, torch.Tensor] = {}

        def capture(name: str) -> Callable:
            def hook(tensor: torch.Tensor, hook: Any = None) -> torch.Tensor:
                got[name] = tensor
                if len(got) == len(wanted):
                    raise StopForward
                return tensor

            return hook

        with torch.inference_mode():
            self._run(tokens, [(n, capture(n)) for n in wanted], attention_mask, return_type=None)
        missing = [n for n in wanted if n not in got]
        if missing:
            raise RuntimeError(f"hook points {missing} did not fire during the forward pass")
        return {n: self._per_token(n, got[n], batch, seq) for n in hook_points}

    def _final(self, tokens: torch.Tensor, hooks: list[tuple[str, Callable]],
               attention_mask: torch.Tensor | None) -> torch.Tensor:
        if self._has_head:
            with torch.inference_mode():
                return self._run(tokens, hooks, attention_mask, return_type="logits")
        # No trained head: the output is the last block's residual; stop there.
        final = f"blocks.{self._n_layers - 1}.hook_out"
        out: dict[str, torch.Tensor] = {}

        def grab(tensor: torch.Tensor, hook: Any = None) -> torch.Tensor:
            out["x"] = tensor
            raise StopForward

        with torch.inference_mode():
            self._run(tokens, [*hooks, (final, grab)], attention_mask, return_type=None)
        return out["x"]

    def logits(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        tokens, attention_mask = self._prepare(tokens, attention_mask)
        return self._final(tokens, [], attention_mask)

    def forward_with_replacement(
        self,
        tokens: torch.Tensor,
        hook_point: str,
        fn: Callable[[torch.Tensor], torch.Tensor],
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self.check_hook_points([hook_point])
        tokens, attention_mask = self._prepare(tokens, attention_mask)
        batch, seq = tokens.shape

        def replace(tensor: torch.Tensor, hook: Any = None) -> torch.Tensor:
            flat = self._per_token(hook_point, tensor, batch, seq)
            return fn(flat).reshape(tensor.shape).to(tensor.dtype)

        return self._final(tokens, [(hook_point, replace)], attention_mask)

    def unembed(self) -> torch.Tensor | None:
        return self.bridge.W_U.detach() if self._has_head else None
