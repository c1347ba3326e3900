"""ElaLoRA on a language model: text classification with the HF Trainer.

Offline (the default) it builds a small randomly initialised BERT and a generated
sentiment task, so it runs anywhere in seconds to minutes:

    python examples/text_classification.py --steps 300

Online, ``--model`` fine-tunes a real hub model on the same generated task
(its own tokenizer; any BERT / RoBERTa / DeBERTa-v2 / Llama-style classifier):

    python examples/text_classification.py --model roberta-base --steps 600

The task: each sentence holds neutral words and one or two sentiment words; the
label says whether the positive ones outnumber the negative ones.  The script
prints the accuracy on held-out sentences, the final rank of every adapter, and
writes ``adapter.safetensors`` (adapters and the classifier head) to ``--output``.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
import transformers

from elalora_vit import ElaLoRAConfig, patch_model, save_adapters
from elalora_vit.integrations.hf import ElaLoRACallback, default_targets

POSITIVE = ["good", "great", "excellent", "lovely", "superb", "pleasant"]
NEGATIVE = ["bad", "awful", "terrible", "poor", "dreadful", "boring"]
NEUTRAL = ["the", "film", "was", "a", "and", "plot", "with", "actors", "it", "story", "music", "scene",
           "of", "ending", "really", "quite", "very", "some", "this", "that"]


def make_sentences(n: int, seed: int, length: int = 12) -> tuple[list[str], list[int]]:
    """``n`` generated sentences and their labels (1 = more positive than negative words)."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        pos, neg = rng.choice([(1, 0), (0, 1), (2, 1), (1, 2), (2, 0), (0, 2)])
        words = [rng.choice(NEUTRAL) for _ in range(length - pos - neg)]
        words += [rng.choice(POSITIVE) for _ in range(pos)] + [rng.choice(NEGATIVE) for _ in range(neg)]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(int(pos > neg))
    return texts, labels


class WordTokenizer:
    """Word-level ids for the generated vocabulary: the offline stand-in for a hub tokenizer."""

    def __init__(self):
        self.ids = {w: i + 1 for i, w in enumerate(sorted(set(POSITIVE + NEGATIVE + NEUTRAL)))}  # 0 = padding

    def __call__(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = [self.ids[w] for w in text.split()][:max_length]
            ids[row, : len(tokens)] = torch.tensor(tokens)
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def build_model(name: str | None, seed: int):
    """(model, tokenize) for a hub model, or a small random BERT with the word tokenizer."""
    torch.manual_seed(seed)
    if name:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name)
        if tokenizer.pad_token is None:  # Llama-style tokenizers have none
            tokenizer.pad_token = tokenizer.eos_token
        model = transformers.AutoModelForSequenceClassification.from_pretrained(name, num_labels=2)
        model.config.pad_token_id = tokenizer.pad_token_id

        def tokenize(texts, max_length):
            out = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
            return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

        return model, tokenize
    words = WordTokenizer()
    config = transformers.BertConfig(
        vocab_size=len(words.ids) + 1, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=64, num_labels=2,
    )
    return transformers.BertForSequenceClassification(config), words


def head_names(model) -> list[str]:
    """The classification head, which trains in full: ``classifier`` (BERT family) or ``score`` (Llama)."""
    return [name for name in ("classifier", "score") if hasattr(model, name)]


def as_dataset(tokenize, texts, labels, max_length: int) -> list[dict]:
    encoded = tokenize(texts, max_length)
    return [{**{k: v[i] for k, v in encoded.items()}, "labels": torch.tensor(labels[i])} for i in range(len(texts))]


def accuracy(model, dataset: list[dict], batch_size: int = 64) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            rows = dataset[start : start + batch_size]
            batch = {k: torch.stack([r[k] for r in rows]).to(model.device) for k in rows[0]}
            correct += int((model(**batch).logits.argmax(-1) == batch["labels"]).sum())
    return 100.0 * correct / len(dataset)


def adapter_config(args) -> ElaLoRAConfig:
    # The three phases in optimizer steps: 20% warm-up, 20% stabilisation, ~15 rounds between.
    return ElaLoRAConfig(
        rank=args.rank,
        warmup_steps=args.steps // 5,
        stabilize_steps=args.steps // 5,
        adjust_interval=max(1, args.steps * 3 // 5 // 15),
        seed=args.seed,
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="hub model name (needs network); default: a small random BERT, offline")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--max-length", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="runs/text_classification")
    args = parser.parse_args(argv)

    model, tokenize = build_model(args.model, args.seed)
    config = adapter_config(args)
    patch_model(model, default_targets(model), config)
    heads = head_names(model)
    for name in heads:
        model.get_submodule(name).requires_grad_(True)

    train = as_dataset(tokenize, *make_sentences(args.train_size, args.seed), args.max_length)
    test = as_dataset(tokenize, *make_sentences(args.test_size, args.seed + 1), args.max_length)
    callback = ElaLoRACallback(config)
    training_args = transformers.TrainingArguments(
        output_dir=args.output, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, warmup_steps=args.steps // 10, weight_decay=0.0, save_strategy="no",
        logging_strategy="no", report_to=[], seed=args.seed, disable_tqdm=True,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    transformers.Trainer(model=model, args=training_args, train_dataset=train, callbacks=[callback]).train()

    result = {"accuracy": accuracy(model, test), "rounds": len(callback.allocator.history),
              "rank_pattern": callback.allocator.rank_pattern()}
    path = save_adapters(model, Path(args.output) / "adapter.safetensors", config, modules_to_save=heads)
    print(f"test accuracy: {result['accuracy']:.1f}%   rounds: {result['rounds']}   adapters: {path}")
    for name, rank in result["rank_pattern"].items():
        print(f"  {name:<48} {rank:>2}  {'#' * rank}")
    return result


if __name__ == "__main__":
    main()
