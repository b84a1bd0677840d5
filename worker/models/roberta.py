"""The RoBERTa path without a hub: a byte-level BPE tokenizer trained here and a
`RobertaConfig` model, saved in Hugging Face layout so every stage type can use it.

Encoder stages (classify, spam, qa) load the directory with their Auto class and get
a new head; the translate stage uses `build_roberta_seq2seq`, an encoder-decoder
made of two RoBERTa stacks.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512},
    "small": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024},
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
}
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
ROBERTA_BASE_VOCAB = 50265  # roberta-base's embedding rows


def train_bpe_tokenizer(texts: Iterable[str], out_dir: str | Path, *, vocab_size: int = 8000, max_length: int = 512) -> Any:
    """Byte-level BPE trained on `texts`, saved as a RoBERTa fast tokenizer in out_dir."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(texts), vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS)
    with tempfile.TemporaryDirectory() as tmp:
        bpe.save_model(tmp)
        tokenizer = RobertaTokenizerFast(
            vocab=str(Path(tmp) / "vocab.json"), merges=str(Path(tmp) / "merges.txt"),  # transformers 5 names
            model_max_length=max_length,
        )
    if len(tokenizer) != bpe.get_vocab_size():
        raise RuntimeError(f"the RoBERTa tokenizer lost its BPE vocabulary ({len(tokenizer)} of {bpe.get_vocab_size()} tokens)")
    tokenizer.save_pretrained(out)
    return tokenizer


def roberta_config(tokenizer: Any, size: str = "tiny", max_length: int = 512, **overrides: Any) -> Any:
    """`overrides` may set `vocab_size` above the tokenizer's (extra embedding rows, never used)."""
    from transformers import RobertaConfig

    vocab_size = max(len(tokenizer), overrides.pop("vocab_size", 0))
    return RobertaConfig(
        vocab_size=vocab_size, max_position_embeddings=max_length + 2, type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, **{**SIZES[size], **overrides},
    )


def build_roberta(texts: Iterable[str], out_dir: str | Path, *, size: str = "tiny", vocab_size: int = 8000,
                  max_length: int = 512, seed: int = 0, embedding_rows: int = 0) -> Path:
    """Tokenizer + untrained `RobertaForMaskedLM`; fine-tune or MLM-pretrain it next.

    `embedding_rows` pads the embedding matrix to that many rows (50265 with `size="base"`
    gives exactly roberta-base's shapes and 125M parameters, e.g. for benchmarks).
    """
    import torch
    from transformers import RobertaForMaskedLM

    torch.manual_seed(seed)
    tokenizer = train_bpe_tokenizer(texts, out_dir, vocab_size=vocab_size, max_length=max_length)
    model = RobertaForMaskedLM(roberta_config(tokenizer, size, max_length, vocab_size=embedding_rows))
    model.save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)


def build_roberta_seq2seq(encoder_dir: str | Path, out_dir: str | Path, *, size: str = "tiny", seed: int = 0) -> Path:
    """An encoder-decoder (RoBERTa encoder from `encoder_dir`, new RoBERTa decoder) for translation."""
    import torch
    from transformers import AutoTokenizer, EncoderDecoderModel, RobertaForCausalLM, RobertaModel

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    encoder = RobertaModel.from_pretrained(encoder_dir, use_safetensors=True, add_pooling_layer=False)
    decoder_config = roberta_config(tokenizer, size, encoder.config.max_position_embeddings - 2,
                                    is_decoder=True, add_cross_attention=True)
    model = EncoderDecoderModel(encoder=encoder, decoder=RobertaForCausalLM(decoder_config))
    model.config.decoder_start_token_id = tokenizer.bos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.decoder_start_token_id = tokenizer.bos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)
