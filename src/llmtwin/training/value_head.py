"""A policy and its value head on one backbone: a LoRA adapter on the base LM plus a Linear on the last hidden state.

The reference model of PPO is the same network with the adapter switched off (`disable_adapter()`), so
there is one copy of the weights in memory. Saved as a PEFT adapter dir plus `value_head.safetensors`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from llmtwin.errors import TwinError

VALUE_HEAD_FILE = "value_head.safetensors"


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding (what `generate` uses): cumsum(mask) − 1, clamped at 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class PolicyWithValue(torch.nn.Module):
    """`model` is a PeftModel (LoRA on a causal LM); `value_head` maps the last hidden state to a scalar."""

    def __init__(self, model: Any, value_head: torch.nn.Linear):
        super().__init__()
        self.model = model
        self.value_head = value_head

    @classmethod
    def create(
        cls,
        base: str = "packaged",
        r: int = 16,
        alpha: int = 32,
        dropout: float = 0.0,
        target_modules: list[str] | str = "all-linear",
        seed: int = 0,
    ) -> tuple[PolicyWithValue, Any]:
        """A fresh LoRA adapter (B = 0: the policy starts equal to the reference) and a zero value head."""
        from peft import LoraConfig, get_peft_model

        from llmtwin.training.base_model import load_causal_lm

        torch.manual_seed(seed)
        base_model, tokenizer = load_causal_lm(base)
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                            task_type="CAUSAL_LM")
        model = get_peft_model(base_model, config)
        head = torch.nn.Linear(base_model.config.hidden_size, 1)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        return cls(model, head), tokenizer

    @classmethod
    def load(cls, adapter_dir: Path, base: str | Path, trainable: bool = False) -> tuple[PolicyWithValue, Any]:
        """The saved adapter (and value head, if saved) on `base`."""
        from peft import PeftModel
        from safetensors.torch import load_file

        from llmtwin.training.base_model import load_causal_lm

        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise TwinError(f"{adapter_dir}: no adapter_config.json (not a PPO policy adapter)")
        base_model, tokenizer = load_causal_lm(base)
        model = PeftModel.from_pretrained(base_model, adapter_dir, is_trainable=trainable)
        head = torch.nn.Linear(base_model.config.hidden_size, 1)
        if (adapter_dir / VALUE_HEAD_FILE).is_file():
            state = load_file(str(adapter_dir / VALUE_HEAD_FILE))
            head.load_state_dict({"weight": state["weight"], "bias": state["bias"]})
        return cls(model, head), tokenizer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, L, V], values [B, L]) with the adapter on."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids_for(attention_mask), output_hidden_states=True, use_cache=False)
        hidden = out.hidden_states[-1]
        values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)
        return out.logits, values

    @torch.no_grad()
    def reference_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits of the base model: the same weights with the adapter switched off."""
        with self.model.disable_adapter():
            out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=position_ids_for(attention_mask), use_cache=False)
        return out.logits

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """A copy of the trainable weights (LoRA + value head): cheap to keep for a rollback."""
        from llmtwin.training.run_dir import trainable_state

        return trainable_state(self)

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        from llmtwin.training.run_dir import restore_trainable

        restore_trainable(self, state)

    def save(self, directory: Path, tokenizer: Any) -> None:
        """PEFT adapter dir + tokenizer + value_head.safetensors."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        save_file({k: v.detach().contiguous() for k, v in self.value_head.state_dict().items()},
                  str(directory / VALUE_HEAD_FILE))
