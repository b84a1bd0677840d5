"""Train, fine-tune, run and score small sequence-to-sequence translation models on CPU.

A scratch model is a joint BPE tokenizer (``tokenizers``) plus a ``MarianMTModel`` built from a config; both are saved
as a plain Hugging Face directory (``tokenizer.json``, ``config.json``, ``generation_config.json``,
``model.safetensors``) that loads with ``AutoTokenizer`` / ``AutoModelForSeq2SeqLM`` and no remote code.
The saved tokenizer appends ``</s>`` to every text, so ``tokenizer(text_target=...)`` yields training labels, and the
saved generation config lets a bare ``model.generate(**tokenizer(texts, return_tensors="pt", padding=True))`` work.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import random
import string
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BertConfig,
    BertLMHeadModel,
    EncoderDecoderModel,
    GenerationConfig,
    MarianConfig,
    MarianMTModel,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from worker.stages.translate import _max_source_len, translate_texts  # noqa: F401 - translate_texts re-exported
from worker.training import bf16_autocast, default_bf16, training_device
from worker.training.dropout import hashed_dropout
from worker.training.task import StageTrainer, pick

PAD, EOS, UNK, BOS = "<pad>", "</s>", "<unk>", "<s>"
MAX_POSITIONS = 256
MAX_TRAIN_TOKENS = 128
MIN_BATCHES_PER_EPOCH = 32
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"d_model": 128, "layers": 2, "heads": 4, "ffn": 512},
    "small": {"d_model": 256, "layers": 3, "heads": 4, "ffn": 1024},
    "medium": {"d_model": 384, "layers": 3, "heads": 6, "ffn": 1536},
    "base": {"d_model": 512, "layers": 4, "heads": 8, "ffn": 2048},
}
CURRICULUM_START = 0.1  # a length curriculum opens on the shortest 10 % of the examples
WARM_BATCH_TOKENS = 4096  # a frozen encoder leaves only the decoder to train: larger steps pay off
WARM_VOCAB = 10000
_ALPHABET = list(string.ascii_letters + string.digits + string.punctuation + "äöüÄÖÜßéèêëàâáçñíóúôîïœæ€°§„“”‚‘’–—«»…")

ProgressFn = Callable[[int, int, dict], None]


def load_pairs(path: str | Path, src: str = "en", tgt: str = "de", limit: int | None = None) -> list[tuple[str, str]]:
    """Read ``(src, tgt)`` pairs from JSONL, skipping blank, malformed or empty-sided lines.

    Raises ``ValueError`` only when no valid pair remains (or ``limit`` < 1).
    """
    pairs: list[tuple[str, str]] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if limit is not None and len(pairs) >= limit:
                break
            try:
                row = json.loads(line)
                s, t = row[src], row[tgt]
            except (ValueError, KeyError, TypeError):
                continue
            if isinstance(s, str) and isinstance(t, str) and s.strip() and t.strip():
                pairs.append((s.strip(), t.strip()))
    if not pairs:
        raise ValueError(f"no valid {src!r}/{tgt!r} pairs in {path}")
    return pairs


def _train_tokenizer(pairs: list[tuple[str, str]], vocab_size: int) -> PreTrainedTokenizerFast:
    """Joint BPE over both sides; the post-processor appends ``</s>`` to every sequence."""
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[PAD, EOS, UNK, BOS],
        initial_alphabet=_ALPHABET, show_progress=False,
    )
    tok.train_from_iterator((text for pair in pairs for text in pair), trainer=trainer)
    eos_id = tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, bos_token=BOS,
        model_max_length=MAX_POSITIONS, padding_side="right", truncation_side="right",
    )


def _scratch_model(tokenizer: PreTrainedTokenizerFast, size: str) -> MarianMTModel:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {sorted(SIZES)}")
    dims = SIZES[size]
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
           "bos_token_id": tokenizer.bos_token_id, "decoder_start_token_id": tokenizer.bos_token_id}
    config = MarianConfig(
        vocab_size=len(tokenizer), decoder_vocab_size=len(tokenizer), max_position_embeddings=MAX_POSITIONS,
        d_model=dims["d_model"], encoder_layers=dims["layers"], decoder_layers=dims["layers"],
        encoder_attention_heads=dims["heads"], decoder_attention_heads=dims["heads"],
        encoder_ffn_dim=dims["ffn"], decoder_ffn_dim=dims["ffn"], activation_function="gelu",
        # attention dropout 0.1: without it the Multi30k recipe's held-out loss rose from 2.034 to 2.096 and its BLEU fell
        # from 33.63 to 32.91 (docs/benchmarks.md, general-domain translation)
        dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, scale_embedding=True,
        share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
        forced_eos_token_id=tokenizer.eos_token_id, **ids,
    )
    model = MarianMTModel(config)
    model.generation_config = GenerationConfig(
        **ids, forced_eos_token_id=tokenizer.eos_token_id, max_new_tokens=128, num_beams=1,
        repetition_penalty=1.2, no_repeat_ngram_size=3,
    )
    return model


def build_scratch_model(
    pairs: list[tuple[str, str]], out_dir: str | Path, *, size: str = "small", vocab_size: int = 8000, seed: int = 0
) -> None:
    """Train a joint BPE tokenizer on ``pairs``, build an untrained Marian model of ``size``, save both to ``out_dir``.

    The vocabulary may come out smaller than ``vocab_size`` on little data. Deterministic given ``seed``.
    """
    if not pairs:
        raise ValueError("build_scratch_model needs at least one pair")
    tokenizer = _train_tokenizer(pairs, vocab_size)
    torch.manual_seed(seed)
    model = _scratch_model(tokenizer, size)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def set_dropout(model: torch.nn.Module, p: float) -> None:
    """Set the residual and attention dropout of a seq2seq ``model`` to ``p``, in its config and in every module that
    already holds a rate (``nn.Dropout`` modules, and the ``dropout``/``attention_dropout`` floats that BART-family
    layers read at each call); activation dropout is left as it is."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout must be in [0, 1], got {p}")
    for key in ("dropout", "attention_dropout", "dropout_rate"):
        if hasattr(model.config, key):
            setattr(model.config, key, p)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
        for attr in ("dropout", "attention_dropout"):
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, p)


def _make_batches(lengths: list[int], batch_tokens: int, rng: random.Random) -> list[list[int]]:
    """Group example indices of similar length so that ``len(batch) * longest <= batch_tokens`` and no batch holds
    more than 1/MIN_BATCHES_PER_EPOCH of the examples (small data sets still get enough updates per epoch)."""
    max_sentences = max(1, math.ceil(len(lengths) / MIN_BATCHES_PER_EPOCH))
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and ((len(current) + 1) * lengths[i] > batch_tokens or len(current) >= max_sentences):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def competence(step: int, steps: float, start: float = CURRICULUM_START) -> float:
    """Share of the examples, shortest first, that a length curriculum of ``steps`` steps draws from at ``step``:
    ``sqrt(start² + (1 - start²) * step / steps)``, the square-root schedule of competence-based curricula
    (Platanios et al., NAACL 2019), so the share grows fast at first and slowly towards 1; 1.0 from ``steps`` on."""
    if steps <= 0 or step >= steps:
        return 1.0
    return min(1.0, math.sqrt(start * start + (1.0 - start * start) * step / steps))


class BatchOrder:
    """The batches a training loop takes, one per step: each epoch every batch once, in a shuffled order; with a length
    curriculum of ``curriculum_steps`` steps, the steps before it instead draw at random from the shortest batches
    that hold the first ``competence(step)`` share of the examples. ``batches`` must come in ascending length, as
    ``_make_batches`` builds them."""

    def __init__(self, batches: list[list[int]], rng: random.Random, curriculum_steps: int = 0) -> None:
        self.batches, self.rng, self.curriculum_steps = batches, rng, curriculum_steps
        total = sum(len(b) for b in batches)
        self._reach = [n / total for n in itertools.accumulate(len(b) for b in batches)]
        self._order: list[int] = []

    def pick(self, step: int) -> int:
        """Index into ``batches`` of the batch for ``step``."""
        if step < self.curriculum_steps:
            share = competence(step, self.curriculum_steps)
            return self.rng.randrange(max(1, bisect.bisect_right(self._reach, share + 1e-12)))
        if not self._order:
            self._order = list(range(len(self.batches)))
            self.rng.shuffle(self._order)
        return self._order.pop()


def _pad(seqs: list[list[int]], value: int, device: Any = None) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (width - len(s)) for s in seqs], dtype=torch.long, device=device)


def _lr_factor(progress: float, warmup: float) -> float:
    """Linear warmup over the first ``warmup`` fraction of training, then linear decay to zero."""
    if progress < warmup:
        return max(progress / warmup, 1e-3)
    return max(0.0, (1.0 - progress) / (1.0 - warmup))

# --------------------------------------------------------------------------- warm start from a pretrained encoder


def is_encoder_only(base: str | Path) -> bool:
    """True for a pretrained encoder (BERT, RoBERTa, MiniLM, ...) that a translation model can be warm-started from."""
    config = AutoConfig.from_pretrained(base)
    return not getattr(config, "is_encoder_decoder", False) and not getattr(config, "is_decoder", False) \
        and config.model_type not in {"encoder-decoder", "gpt2", "llama"} and hasattr(config, "hidden_size")


def _remap_embeddings(tokenizer: PreTrainedTokenizerFast, base_tokenizer: Any, old: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Input embeddings for ``tokenizer``'s vocabulary built from the pretrained encoder's: each token gets the mean
    embedding of the pieces the encoder's own tokenizer splits it into (a word-initial token as a word, an inner
    piece as a continuation where the encoder's vocabulary has one). Returns the matrix and the share of tokens that
    map to a single pretrained piece."""
    base_vocab = base_tokenizer.get_vocab()
    unk = base_tokenizer.unk_token_id if base_tokenizer.unk_token_id is not None else 0
    specials = {PAD: base_tokenizer.pad_token_id, EOS: base_tokenizer.sep_token_id or base_tokenizer.eos_token_id,
                UNK: unk, BOS: base_tokenizer.cls_token_id or base_tokenizer.bos_token_id}
    new = torch.empty(len(tokenizer), old.size(1))
    exact = 0
    for token, index in tokenizer.get_vocab().items():
        ids: list[int] = []
        if specials.get(token) is not None:
            ids = [int(specials[token])]
        elif token.startswith("▁"):
            ids = base_tokenizer(token[1:], add_special_tokens=False)["input_ids"] if token[1:] else []
        else:
            piece = next((base_vocab[c] for c in ("##" + token, "##" + token.lower()) if c in base_vocab), None)
            ids = [piece] if piece is not None else base_tokenizer(token, add_special_tokens=False)["input_ids"]
        ids = [i for i in ids if 0 <= i < old.size(0)] or [unk]
        exact += len(ids) == 1 and ids != [unk]
        new[index] = old[ids].mean(0)
    return new, exact / max(1, len(tokenizer))


def build_warm_model(
    pairs: list[tuple[str, str]], out_dir: str | Path, encoder_dir: str | Path, *, size: str = "base",
    vocab_size: int = WARM_VOCAB, seed: int = 0,
) -> dict[str, Any]:
    """A Hugging Face ``EncoderDecoderModel``: the pretrained encoder in ``encoder_dir`` (its input embeddings moved
    onto a joint BPE vocabulary trained on ``pairs``) and a fresh BERT-style decoder of ``size`` with cross-attention.
    Saved with its tokenizer to ``out_dir``; it loads with ``AutoModelForSeq2SeqLM`` and no remote code.
    Returns what was built (vocabulary, share of tokens mapped to one pretrained piece)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {sorted(SIZES)}")
    tokenizer = _train_tokenizer(pairs, vocab_size)
    base_tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    encoder = AutoModel.from_pretrained(encoder_dir, use_safetensors=True)
    old = encoder.get_input_embeddings().weight.detach().float()
    weights, exact = _remap_embeddings(tokenizer, base_tokenizer, old)
    embedding = torch.nn.Embedding(len(tokenizer), old.size(1), padding_idx=tokenizer.pad_token_id)
    embedding.weight.data.copy_(weights)
    encoder.set_input_embeddings(embedding)
    encoder.config.vocab_size = len(tokenizer)
    encoder.config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    dims = SIZES[size]
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
           "bos_token_id": tokenizer.bos_token_id}
    decoder = BertLMHeadModel(BertConfig(
        vocab_size=len(tokenizer), hidden_size=dims["d_model"], num_hidden_layers=dims["layers"],
        num_attention_heads=dims["heads"], intermediate_size=dims["ffn"], hidden_act="gelu",
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0, max_position_embeddings=MAX_POSITIONS,
        is_decoder=True, add_cross_attention=True, tie_word_embeddings=True, **ids,
    ))
    model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
    with torch.no_grad():  # the wrapper's weight initialisation redraws modules it did not load: set the remapped table after it
        encoder.get_input_embeddings().weight.copy_(weights)
    for key, value in {**ids, "decoder_start_token_id": tokenizer.bos_token_id}.items():
        setattr(model.config, key, value)
    model.generation_config = GenerationConfig(
        **ids, decoder_start_token_id=tokenizer.bos_token_id, forced_eos_token_id=tokenizer.eos_token_id,
        max_new_tokens=128, num_beams=1, no_repeat_ngram_size=4,
    )
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {"vocab": len(tokenizer), "embeddings_one_piece": round(exact, 3), "encoder": str(encoder_dir)}


def _encode_sources(encoder: torch.nn.Module, src: list[list[int]], pad_id: int, bf16: bool, max_tokens: int = 8192) -> list[torch.Tensor]:
    """The frozen encoder's last hidden states for every source (unpadded), computed once in length-sorted batches.
    Kept in bf16 where training runs under bf16 autocast (half the memory); in fp32 elsewhere, where the decoder's
    fp32 layers read them as they are."""
    out: list[torch.Tensor] = [torch.empty(0)] * len(src)
    order = sorted(range(len(src)), key=lambda i: len(src[i]))
    dtype = torch.bfloat16 if bf16 else torch.float32
    device = next(encoder.parameters()).device
    encoder.eval()
    with torch.inference_mode(), bf16_autocast(device.type, bf16):
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and (end - start + 1) * len(src[order[end]]) <= max_tokens:
                end += 1
            idx = order[start:end]
            input_ids = _pad([src[i] for i in idx], pad_id, device)
            hidden = encoder(input_ids=input_ids, attention_mask=input_ids.ne(pad_id)).last_hidden_state
            for row, i in enumerate(idx):
                out[i] = hidden[row, : len(src[i])].to(dtype).clone()
            start = end
    return out


def _teacher_forced_loss(model: Any, memory: list[torch.Tensor] | None, src: list[list[int]], tgt: list[list[int]],
                         idx: list[int], pad_id: int, bf16: bool) -> float:
    """Mean token cross-entropy (no smoothing) of ``model`` on the held-out examples ``idx``: over the cached encoder
    states in ``memory`` where the encoder is frozen, through the whole model otherwise."""
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode(), bf16_autocast(model.device.type, bf16):
        for start in range(0, len(idx), 64):
            chunk = idx[start:start + 64]
            if memory is not None:
                logits, labels = _memory_logits(model, memory, tgt, chunk, pad_id)
            else:
                logits, labels = _full_logits(model, src, tgt, chunk, pad_id)
            loss = F.cross_entropy(logits.float(), labels, reduction="sum")
            total, count = total + float(loss), count + int(labels.ne(-100).sum())
    model.train()
    return total / max(1, count)


def _full_logits(model: Any, src: list[list[int]], tgt: list[list[int]], idx: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the whole model (encoder and decoder) for the examples ``idx``: ``(batch * target length, vocab)``
    with the matching labels, padding labelled -100."""
    input_ids = _pad([src[i] for i in idx], pad_id, model.device)
    labels = _pad([tgt[i] for i in idx], -100, model.device)
    decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels=labels)
    logits = model(input_ids=input_ids, attention_mask=input_ids.ne(pad_id), decoder_input_ids=decoder_input_ids).logits
    return logits.reshape(-1, logits.size(-1)), labels.reshape(-1)


def _adamw(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """AdamW, fused into one kernel per step where torch has it for the parameters' device (CPU included since
    torch 2.4): on two cores it made a translation step about 12 % faster than the per-tensor loop."""
    kwargs: dict[str, Any] = {"lr": lr, "betas": (0.9, 0.98), "eps": 1e-8, "weight_decay": 0.01}
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, **kwargs)


def _memory_logits(model: Any, memory: list[torch.Tensor], tgt: list[list[int]], idx: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder logits over cached encoder states, at the target's real (non-padding) positions only: ``(N, vocab)``
    with the ``(N,)`` labels. Skipping the padding's logits spares the largest matrix of a step."""
    hidden = torch.nn.utils.rnn.pad_sequence([memory[i] for i in idx], batch_first=True)
    lengths = torch.tensor([memory[i].size(0) for i in idx], device=hidden.device)
    mask = (torch.arange(hidden.size(1), device=hidden.device)[None, :] < lengths[:, None]).long()
    labels = _pad([tgt[i] for i in idx], -100, hidden.device)
    decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels=labels)
    projection = getattr(model, "enc_to_dec_proj", None)
    if projection is not None:
        hidden = projection(hidden)
    states = model.decoder.bert(input_ids=decoder_input_ids, attention_mask=decoder_input_ids.ne(pad_id).long(),
                                encoder_hidden_states=hidden, encoder_attention_mask=mask).last_hidden_state
    real = labels.ne(-100)
    return model.decoder.cls(states[real]), labels[real]


def train_translation(
    pairs: list[tuple[str, str]],
    out_dir: str | Path,
    *,
    base: str | Path | None = None,
    size: str = "small",
    epochs: float = 12.0,
    lr: float = 1e-3,
    batch_tokens: int | None = None,
    max_minutes: float | None = None,
    seed: int = 0,
    eval_pairs: list[tuple[str, str]] | None = None,
    progress: ProgressFn | None = None,
    hashed_masks: bool = False,
    dropout: float | None = None,
    dropout_from_epoch: float | None = None,
    curriculum_epochs: float | None = None,
) -> dict:
    """Train a translation model on ``pairs`` and save it to ``out_dir``; ``base`` picks how it starts:

    - ``None``: from scratch, a joint BPE tokenizer and a Marian model of ``size``;
    - a pretrained encoder (BERT, MiniLM, ...): warm start. The encoder, moved onto a joint BPE vocabulary, stays
      frozen; its states are computed once; a fresh decoder of ``size`` learns to translate from them;
    - a seq2seq directory (Marian, BART, T5, an earlier warm-started model, ...): fine-tuned, every weight.

    From scratch and warm-started, with 200 pairs or more, 1 % of ``pairs`` (at most 500) is held out, and the final
    weights compete with their running mean (over the second half of training for a frozen encoder, the last quarter
    otherwise) on that slice: the lower loss is saved. Weights the model leaves out of its saved files (Marian's
    sinusoidal positions) are not trained.

    ``batch_tokens`` bounds ``sentences * longest sequence`` per step (default 1024, 4096 with a frozen encoder); a step
    also takes at most 1/32 of ``pairs``. The learning rate warms up over the first 6 % of training and decays linearly
    to zero at ``epochs``; with ``max_minutes`` the decay also tracks elapsed time, so the schedule ends when the budget
    does (results then depend on machine speed; without a budget they depend on ``seed`` only). ``train_seconds``
    covers tokenizer training, model building, encoding and the loop (not the save or the evaluation).
    ``progress(step, total_steps, {"loss": ...})`` is called every few steps and once at the end.
    ``hashed_masks`` draws dropout masks from a counter hash (``worker.training.dropout``) rather than ``F.dropout``'s
    Bernoulli sampler: faster per mask, but whole runs measured only 1.03-1.08x faster and not clearly as good, so it
    is off by default (docs/benchmarks.md, general-domain translation).
    ``dropout`` (0 to 1) replaces the model's residual and attention dropout for this training (``None`` keeps the
    model's own: 0.1 for a scratch model); the saved config records the value trained with.
    ``dropout_from_epoch`` ("late dropout") trains without dropout for that many epochs, then at the rate above:
    while the model under-fits, dropout-free steps are faster and learn more each, and the regularisation comes in
    once the data has been seen often enough to over-fit, however many epochs the budget buys on the machine.
    ``curriculum_epochs`` (a length curriculum) spends that many epochs' worth of steps drawing batches at random from
    the shortest examples first, the share growing by ``competence`` from 10 % to all of them; plain shuffled epochs
    follow. Those steps count towards ``epochs`` like any others.
    Returns timings, step/epoch counts, the hyperparameters and, if ``eval_pairs`` is given, BLEU/chrF on them.
    """
    if not pairs:
        raise ValueError("train_translation needs at least one pair")
    for name, value in (("dropout_from_epoch", dropout_from_epoch), ("curriculum_epochs", curriculum_epochs)):
        if value is not None and value < 0:
            raise ValueError(f"{name} must be 0 or more, got {value}")
    start = time.monotonic()
    out_dir = Path(out_dir)
    origin = "scratch" if base is None else ("warm" if is_encoder_only(base) else "finetune")
    built: dict[str, Any] = {}
    rng = random.Random(seed)
    held_out: list[tuple[str, str]] = []
    if origin != "finetune" and len(pairs) >= 200:
        shuffled = pairs[:]
        rng.shuffle(shuffled)
        cut = min(500, len(pairs) // 100)
        held_out, pairs = shuffled[:cut], shuffled[cut:]
    if origin == "scratch":
        build_scratch_model(pairs, out_dir, size=size, seed=seed)
        base = out_dir
    elif origin == "warm":
        built = build_warm_model(pairs, out_dir, str(base), size=size, seed=seed)
        base = out_dir
    frozen = origin == "warm"
    tokenizer = AutoTokenizer.from_pretrained(base)
    # short sequences: plain attention trains faster on CPU than the fused kernel, whose backward took 31 % of a
    # scratch step on two cores (docs/benchmarks.md, general-domain translation)
    model = AutoModelForSeq2SeqLM.from_pretrained(str(base), use_safetensors=True, attn_implementation="eager")
    device = training_device()
    model.to(device)
    if dropout is not None:
        set_dropout(model, dropout)
    late_rate = float(getattr(model.config, "dropout", 0.0) or 0.0)
    late_step: int | None = None
    if dropout_from_epoch:
        set_dropout(model, 0.0)
    torch.manual_seed(seed)
    batch_tokens = batch_tokens or (WARM_BATCH_TOKENS if frozen else 1024)
    max_len = min(MAX_TRAIN_TOKENS, _max_source_len(model, tokenizer))
    src = tokenizer([p[0] for p in pairs], truncation=True, max_length=max_len)["input_ids"]
    tgt = tokenizer(text_target=[p[1] for p in pairs], truncation=True, max_length=max_len)["input_ids"]
    pad_id = tokenizer.pad_token_id
    bf16 = default_bf16(device)
    memory: list[torch.Tensor] | None = None
    held: list[int] = []
    # weights the model does not save (Marian's sinusoidal positions, rebuilt on every load) stay as they are: trained,
    # they would drift from what a loaded model computes
    unsaved = set(getattr(model, "_keys_to_ignore_on_save", None) or [])
    for name, param in model.named_parameters():
        if name in unsaved:
            param.requires_grad_(False)
    if held_out:
        src += tokenizer([p[0] for p in held_out], truncation=True, max_length=max_len)["input_ids"]
        tgt += tokenizer(text_target=[p[1] for p in held_out], truncation=True, max_length=max_len)["input_ids"]
        held = list(range(len(pairs), len(src)))
    if frozen:
        for param in model.get_encoder().parameters():
            param.requires_grad_(False)
        memory = _encode_sources(model.get_encoder(), src, pad_id, bf16)
    lengths = [max(len(s), len(t)) for s, t in zip(src[: len(pairs)], tgt[: len(pairs)])]
    batches = _make_batches(lengths, batch_tokens, rng)
    total_steps = max(1, math.ceil(epochs * len(batches)))
    warmup = 0.06
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = _adamw(trainable, lr)
    # checkpoint averaging: a running mean of the weights over the tail of training (the second half for a frozen
    # encoder's fresh decoder, the last quarter otherwise) competes with the final weights on the held-out slice
    average: list[torch.Tensor] | None = None
    average_from, averaged = (0.5 if frozen else 0.75), 0
    budget = max_minutes * 60.0 if max_minutes is not None else None
    curriculum_steps = math.ceil((curriculum_epochs or 0) * len(batches))
    batch_order = BatchOrder(batches, rng, curriculum_steps)
    model.train()
    step, loss_sum, loss_n, frac = 0, 0.0, 0, 0.0
    while step < total_steps:
        idx = batches[batch_order.pick(step)]
        if dropout_from_epoch and late_step is None and step >= dropout_from_epoch * len(batches):
            set_dropout(model, late_rate)
            late_step = step
        with bf16_autocast(device, bf16), hashed_dropout(hashed_masks):
            if memory is not None:
                logits, labels = _memory_logits(model, memory, tgt, idx, pad_id)
            else:
                logits, labels = _full_logits(model, src, tgt, idx, pad_id)
        loss = F.cross_entropy(logits.float(), labels, ignore_index=-100, label_smoothing=0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        elapsed = time.monotonic() - start
        frac = step / total_steps if budget is None else max(step / total_steps, elapsed / budget)
        for group in optimizer.param_groups:
            group["lr"] = lr * _lr_factor(frac, warmup)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if held and frac >= average_from:
            averaged += 1
            with torch.no_grad():
                if average is None:
                    average = [p.detach().clone() for p in trainable]
                else:
                    torch._foreach_lerp_(average, trainable, 1.0 / averaged)
        step += 1
        loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1
        out_of_time = budget is not None and time.monotonic() - start >= budget
        if progress is not None and (step % 10 == 0 or step == total_steps or out_of_time):
            progress(step, total_steps, {"loss": loss_sum / loss_n, "lr": optimizer.param_groups[0]["lr"]})
            loss_sum, loss_n = 0.0, 0
        if out_of_time:
            break
    train_seconds = time.monotonic() - start
    selection: dict[str, Any] = {}
    if held:
        selection["final_loss"] = round(_teacher_forced_loss(model, memory, src, tgt, held, pad_id, bf16), 4)
        if average is not None:
            final = [p.detach().clone() for p in trainable]
            with torch.no_grad():
                torch._foreach_copy_(trainable, average)
            selection["average_loss"] = round(_teacher_forced_loss(model, memory, src, tgt, held, pad_id, bf16), 4)
            selection["averaged_steps"] = averaged
        selection["kept"] = "average" if selection.get("average_loss", math.inf) <= selection["final_loss"] else "final"
        if average is not None and selection["kept"] == "final":
            with torch.no_grad():
                torch._foreach_copy_(trainable, final)
        selection["held_out_pairs"] = len(held)
    for param in model.parameters():
        param.requires_grad_(True)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    metrics = evaluate_translation(model, eval_pairs, tokenizer=tokenizer) if eval_pairs else {}
    return {
        "train_seconds": round(train_seconds, 2),
        "steps": step,
        "epochs": round(step / len(batches), 3),
        "train_pairs": len(pairs),
        "seed": seed,
        "device": device,
        "params": {"base": None if origin == "scratch" else str(base if origin == "finetune" else built.get("encoder")),
                   "start": origin, "size": size if origin != "finetune" else None, "epochs": epochs, "lr": lr,
                   "batch_tokens": batch_tokens, "max_minutes": max_minutes, "warmup": warmup,
                   "label_smoothing": 0.1, "bf16_autocast": bf16, "frozen_encoder": frozen,
                   "dropout_masks": "hashed" if hashed_masks else "bernoulli",
                   "dropout": getattr(model.config, "dropout", None),
                   "attention_dropout": getattr(model.config, "attention_dropout", None),
                   **({"dropout_from_epoch": dropout_from_epoch, "dropout_from_step": late_step} if dropout_from_epoch else {}),
                   **({"curriculum_epochs": curriculum_epochs, "curriculum_steps": curriculum_steps} if curriculum_steps else {}),
                   "n_parameters": sum(p.numel() for p in model.parameters()),
                   "n_trained": sum(p.numel() for p in trainable), **built},
        **({"selection": selection} if selection else {}),
        "metrics": metrics,
    }


def evaluate_translation(
    model_dir_or_model: str | Path | PreTrainedModel,
    pairs: list[tuple[str, str]],
    *,
    tokenizer: Any = None,
    num_beams: int = 1,
    batch_size: int = 64,
) -> dict:
    """Corpus BLEU and chrF (sacrebleu defaults) of the model's translations of ``pairs``: ``{"bleu", "chrf", "n"}``."""
    import sacrebleu

    if isinstance(model_dir_or_model, (str, Path)):
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_dir_or_model)
        model = AutoModelForSeq2SeqLM.from_pretrained(model_dir_or_model, use_safetensors=True)
    else:
        model = model_dir_or_model
        if tokenizer is None:
            raise ValueError("pass tokenizer= when evaluating an in-memory model")
    hyps = translate_texts(model, tokenizer, [p[0] for p in pairs], num_beams=num_beams, batch_size=batch_size)
    refs = [[p[1] for p in pairs]]
    return {"bleu": round(sacrebleu.corpus_bleu(hyps, refs).score, 2),
            "chrf": round(sacrebleu.corpus_chrf(hyps, refs).score, 2), "n": len(pairs)}


# --------------------------------------------------------------------------- the translation StageTrainer


class TranslateTrainer(StageTrainer):
    """Training and evaluation of translate stages: examples are (source, reference) pairs."""

    auto_model = "AutoModelForSeq2SeqLM"

    def read(self, path: str | Path, stage: Any = None, labels: Any = None, limit: int | None = None) -> list[Any]:
        if stage is None:
            return [tuple(p) for p in load_pairs(path, limit=limit)]
        return [tuple(p) for p in load_pairs(path, stage.source_lang, stage.target_lang, limit)]

    def encode(self, example: Any) -> dict[str, Any]:
        return {"source": example[0], "reference": example[1]}

    def decode(self, row: dict[str, Any]) -> Any:
        return (row["source"], row["reference"])

    def train(self, stage: Any, examples: list[Any], out: str | Path, *, base: str | None, labels: Any = None,
              eval_examples: list[Any] | None = None, progress: ProgressFn | None = None, **params: Any) -> dict[str, Any]:
        """From scratch when `base` is None (a Marian model of `size`), else fine-tuned from `base`."""
        return train_translation([tuple(p) for p in examples], out, base=base, eval_pairs=eval_examples, progress=progress,
                                 **pick(params, "size", "epochs", "lr", "max_minutes", "seed", "dropout", "dropout_from_epoch",
                                         "curriculum_epochs"))

    def predict(self, stage: Any, model: Any, tokenizer: Any, examples: list[Any]) -> list[Any]:
        return translate_texts(model, tokenizer, [src for src, _ in examples], num_beams=stage.num_beams,
                               max_new_tokens=stage.max_new_tokens, prefix=stage.prefix)

    def metrics(self, stage: Any, examples: list[Any], predictions: list[Any], labels: Any) -> dict[str, Any]:
        import sacrebleu

        refs = [ref for _, ref in examples]
        return {"bleu": round(sacrebleu.corpus_bleu(predictions, [refs]).score, 2),
                "chrf": round(sacrebleu.corpus_chrf(predictions, [refs]).score, 2), "n": len(predictions)}

    def evaluate(self, stage: Any, model: Any, tokenizer: Any, examples: list[Any], labels: Any) -> dict[str, Any]:
        return evaluate_translation(model, examples, tokenizer=tokenizer, num_beams=stage.num_beams)

    def counted_module(self, model: Any) -> Any:
        return model.get_encoder()


TRAINER = TranslateTrainer()
