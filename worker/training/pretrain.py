"""Domain adaptation: continue masked-language-model pretraining of a stage's encoder on
unlabelled documents (`textworker pretrain`), so a later fine-tune starts from an encoder
that has read text like the pipeline's.

The base may be a plain encoder, a masked-LM checkpoint or a fine-tuned classifier: its
encoder weights load into an `AutoModelForMaskedLM`, and an LM head the base lacks starts
fresh. The texts are split once, deterministically for a seed, into training texts and
a held-out slice; the held-out slice is masked once (seeded) and the same masked batches
measure perplexity before and after training, so the two figures are comparable. The
result is a new version directory (safetensors, tokenizer, `textworker.json` with both
perplexities) that `textworker train --base DIR` and fine-tuning start from.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from worker.errors import DataFileError, ModelFormatError
from worker.training import bf16_autocast, training_device

Progress = Callable[[int, int, dict[str, float]], None]
MAX_HELDOUT = 2000


def split_texts(texts: Sequence[str], holdout: float, seed: int) -> tuple[list[str], list[str]]:
    """(training texts, held-out texts): a seeded shuffle, the held-out share taken first."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_held = min(MAX_HELDOUT, max(1, round(len(texts) * holdout)))
    if len(texts) - n_held < 1:
        raise DataFileError(f"{len(texts)} texts are too few to hold {n_held} out and still train",
                            hint="give more texts, or a smaller --holdout")
    held = [texts[i] for i in order[:n_held]]
    return [texts[i] for i in order[n_held:]], held


def load_masked_lm(base: str) -> tuple[Any, Any, bool]:
    """(model, tokenizer, whether the LM head started fresh) for a local model or family directory."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from worker.models import loading

    ref = loading.resolve(base)
    tokenizer = loading.load_pretrained(AutoTokenizer, ref)
    if tokenizer.mask_token is None:
        raise ModelFormatError(f"`{ref.location}`'s tokenizer has no mask token, so it cannot be MLM-pretrained",
                               hint="use an encoder with a mask token (RoBERTa, BERT/MiniLM): textworker models build-roberta")
    model, info = loading.load_pretrained(AutoModelForMaskedLM, ref, output_loading_info=True)
    fresh_head = any(not key.startswith(model.base_model_prefix + ".") for key in info.get("missing_keys", []))
    return model, tokenizer, fresh_head


def _encode(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[dict[str, list[int]]]:
    encoded = tokenizer([t[: max_length * 12] for t in texts], truncation=True, max_length=max_length)
    return [{"input_ids": ids} for ids in encoded["input_ids"]]


def _batches(features: list[dict[str, list[int]]], batch_size: int, rng: random.Random | None) -> list[list[int]]:
    """Index batches of similar lengths (little padding); shuffled when `rng` is given."""
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        rng.shuffle(batches)
    return batches


def masked_perplexity(model: Any, batches: Sequence[dict[str, Any]]) -> float:
    """exp(mean cross-entropy over the masked tokens) of fixed, already masked batches."""
    import torch

    device = next(model.parameters()).device
    total_loss, total_tokens = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), batch["labels"].view(-1),
                                                     ignore_index=-100, reduction="sum")
            total_loss += float(loss)
            total_tokens += int((batch["labels"] != -100).sum())
    return math.exp(total_loss / total_tokens) if total_tokens else float("nan")


def pretrain_mlm(
    texts: Sequence[str], out_dir: str | Path, *, base: str, epochs: float = 1.0, lr: float = 1e-4, batch_size: int = 32,
    max_length: int = 128, mlm_probability: float = 0.15, holdout: float = 0.1, warmup: float = 0.06,
    weight_decay: float = 0.01, max_minutes: float | None = None, seed: int = 0, bf16: bool | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Continue MLM training of `base` on `texts`; save to `out_dir`; return what happened (perplexities included)."""
    import torch
    from transformers import DataCollatorForLanguageModeling

    torch.manual_seed(seed)
    model, tokenizer, fresh_head = load_masked_lm(base)
    device = training_device()
    model.to(device)
    bf16 = device == "cuda" if bf16 is None else bf16  # on this project's CPUs bf16 autocast was slower (README)
    train_texts, held_texts = split_texts(texts, holdout, seed)
    train_features, held_features = _encode(tokenizer, train_texts, max_length), _encode(tokenizer, held_texts, max_length)
    eval_collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, seed=seed + 1)
    held_batches = [dict(eval_collator([held_features[i] for i in idx])) for idx in _batches(held_features, batch_size, None)]
    before = masked_perplexity(model, held_batches)

    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, seed=seed)
    rng = random.Random(seed)
    steps_per_epoch = math.ceil(len(train_features) / batch_size)
    total = max(1, int(steps_per_epoch * epochs))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warm = max(1, int(total * warmup))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    started = time.perf_counter()
    step, loss_avg, stopped_early = 0, 0.0, False
    model.train()
    while step < total and not stopped_early:
        for indices in _batches(train_features, batch_size, rng):
            batch = {k: v.to(device) for k, v in collator([train_features[i] for i in indices]).items()}
            with bf16_autocast(device, bf16):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            value = loss.detach().item()
            loss_avg = 0.9 * loss_avg + 0.1 * value if step > 1 else value
            if progress is not None and (step % 10 == 0 or step == total):
                progress(step, total, {"loss": round(loss_avg, 4)})
            stopped_early = max_minutes is not None and time.perf_counter() - started > max_minutes * 60
            if step >= total or stopped_early:
                break
    seconds = time.perf_counter() - started
    after = masked_perplexity(model, held_batches)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {
        "train_seconds": round(seconds, 1), "steps": step, "epochs": round(step / steps_per_epoch, 3),
        "stopped_by_budget": stopped_early, "train_texts": len(train_texts), "heldout_texts": len(held_texts),
        "lm_head_initialised": fresh_head, "seed": seed, "device": device, "bf16_autocast": bf16,
        "params": {"lr": lr, "batch_size": batch_size, "max_length": max_length, "epochs": epochs,
                   "mlm_probability": mlm_probability, "holdout": holdout, "warmup": warmup},
        "metrics": {"perplexity_before": round(before, 3), "perplexity_after": round(after, 3)},
    }


# --------------------------------------------------------------------------- command
