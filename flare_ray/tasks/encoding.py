"""Encoding parallel records for each architecture family, and decoding predictions.

* Encoders (XLM-R): a classification head (label index) or a span head
  (start/end token of the answer; an answer cut off by truncation points at the
  first token and can never be predicted as a string, so it scores as wrong).
* Encoder-decoders (mT5) and decoders (Llama, Gemma): generative, as in the
  paper: a prompt and the answer string. The loss covers only the answer
  tokens (labels are -100 elsewhere). Decoder training sequences are
  ``prompt + answer + eos`` padded on the right; for decoders FLARE fuses
  exactly the positions labelled -100 that are real tokens, i.e. the prompt.

Every batch carries the source side (``source_input_ids``/``source_attention_mask``),
framed the same way as the target side (the English prompt for generative models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from flare_ray.fusion import ArchitectureFamily

from .base import Task

IGNORE = -100


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]  # what the model's forward (or generate) takes
    meta: list[dict[str, Any]]  # per record: what decoding needs (span offsets, contexts)


class TaskEncoder:
    """Encodes records of ``task`` for a model of ``family`` with ``tokenizer``."""

    def __init__(
        self,
        task: Task,
        tokenizer,
        family: ArchitectureFamily | str,
        max_length: int,
        source: bool = True,
        mt_tokenizer=None,
    ):
        """``source``: add the English side (FLARE). ``mt_tokenizer``: add the target text in the MT
        model's tokenization as ``mt_input_ids`` (FLARE-MT, whose MT encoder reads the target)."""
        self.task = task
        self.tokenizer = tokenizer
        self.family = ArchitectureFamily(family)
        self.max_length = max_length
        self.with_source = source
        self.mt_tokenizer = mt_tokenizer
        self.generative = self.family is not ArchitectureFamily.ENCODER
        if self.generative and tokenizer.eos_token_id is None:
            raise ValueError("generative encoding needs a tokenizer with an eos token")

    # -- training batches ----------------------------------------------------
    def train_batch(self, records: Sequence[dict[str, Any]]) -> Batch:
        """Inputs with labels (the loss) for a training or validation-loss step."""
        return self._with_mt(records, self._train_batch(records))

    def _with_mt(self, records, batch: Batch) -> Batch:
        if self.mt_tokenizer is not None:
            texts = [" ".join(r[f"target_{f}"] for f in self.task.text_fields) for r in records]
            mt = self.mt_tokenizer(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
            batch.inputs.update(mt_input_ids=mt.input_ids, mt_attention_mask=mt.attention_mask)
        return batch

    def _train_batch(self, records: Sequence[dict[str, Any]]) -> Batch:
        if not self.generative:
            return self._encoder_batch(records, with_labels=True)
        if self.family is ArchitectureFamily.ENCODER_DECODER:
            batch = self.prompt_batch(records)
            answers = self.tokenizer([self.task.answer(r) for r in records], padding=True, return_tensors="pt")
            labels = answers.input_ids.masked_fill(answers.attention_mask == 0, IGNORE)
            batch.inputs["labels"] = labels
            return batch
        return self._decoder_batch(records)

    def _sides(self, records, side: str) -> list[list[str]]:
        return [[r[f"{side}_{f}"] for r in records] for f in self.task.text_fields]

    def _tokenize(self, texts: list[list[str]], **kwargs):
        return self.tokenizer(
            *texts, truncation="only_second" if len(texts) == 2 and not self.task.labels else True,
            max_length=self.max_length, padding=True, return_tensors="pt", **kwargs,
        )

    def _encoder_batch(self, records, with_labels: bool) -> Batch:
        qa = self.task.labels is None
        target = self._tokenize(self._sides(records, "target"), return_offsets_mapping=qa)
        inputs: dict[str, torch.Tensor] = {"input_ids": target.input_ids, "attention_mask": target.attention_mask}
        meta: list[dict[str, Any]] = [{"id": r["id"]} for r in records]
        if qa:
            offsets = target.pop("offset_mapping")
            starts, ends = [], []
            for i, r in enumerate(records):
                sequence_ids = target.sequence_ids(i)
                meta[i].update(context=r["target_context"], offsets=offsets[i].tolist(), sequence_ids=sequence_ids)
                start, end = _answer_tokens(r["target_answers"][0], offsets[i].tolist(), sequence_ids)
                starts.append(start)
                ends.append(end)
            if with_labels:
                inputs["start_positions"] = torch.tensor(starts)
                inputs["end_positions"] = torch.tensor(ends)
        elif with_labels:
            inputs["labels"] = torch.tensor([self.task.labels.index(r["label"]) for r in records])
        if self.with_source:
            source = self._tokenize(self._sides(records, "source"))
            inputs.update(source_input_ids=source.input_ids, source_attention_mask=source.attention_mask)
        return Batch(inputs, meta)

    def _decoder_batch(self, records) -> Batch:
        tok, rows, label_rows = self.tokenizer, [], []
        for r in records:
            answer = tok(" " + self.task.answer(r), add_special_tokens=False).input_ids + [tok.eos_token_id]
            answer = answer[: self.max_length // 2]
            prompt = self._fit(tok(self.task.prompt(r, "target")).input_ids, self.max_length - len(answer))
            rows.append(prompt + answer)
            label_rows.append([IGNORE] * len(prompt) + answer)
        width = max(map(len, rows))
        pad = lambda seq, value: seq + [value] * (width - len(seq))  # noqa: E731 (right padding)
        inputs = {
            "input_ids": torch.tensor([pad(r, tok.pad_token_id) for r in rows]),
            "attention_mask": torch.tensor([pad([1] * len(r), 0) for r in rows]),
            "labels": torch.tensor([pad(r, IGNORE) for r in label_rows]),
        }
        if self.with_source:
            inputs.update(self._source_prompts(records))
        return Batch(inputs, [{"id": r["id"]} for r in records])

    # -- prediction batches --------------------------------------------------
    def prompt_batch(self, records: Sequence[dict[str, Any]]) -> Batch:
        """Generative: the target prompts (padded on the tokenizer's side) and the source prompts."""
        prompts = self._prompts(records, "target")
        inputs = {"input_ids": prompts.input_ids, "attention_mask": prompts.attention_mask}
        if self.with_source:
            inputs.update(self._source_prompts(records))
        return Batch(inputs, [{"id": r["id"]} for r in records])

    def _source_prompts(self, records) -> dict[str, torch.Tensor]:
        source = self._prompts(records, "source")
        return {"source_input_ids": source.input_ids, "source_attention_mask": source.attention_mask}

    def _prompts(self, records, side: str):
        ids = [self._fit(self.tokenizer(self.task.prompt(r, side)).input_ids, self.max_length) for r in records]
        return self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")

    def _fit(self, ids: list[int], budget: int) -> list[int]:
        """Cut a prompt to ``budget`` tokens from the left, keeping a leading BOS: the end of a
        prompt (the question, the 'Answer:' cue) matters more than the start of a long context."""
        if len(ids) <= budget:
            return ids
        head = ids[:1] if ids[0] == self.tokenizer.bos_token_id else []
        return head + ids[len(ids) - (budget - len(head)) :]

    @torch.no_grad()
    def predict(self, model, records: Sequence[dict[str, Any]], batch_size: int = 32, max_new_tokens: int = 32) -> list:
        """Predictions (label or answer strings; ``None`` for a generated non-label) for ``records``."""
        device = next(model.parameters()).device
        predictions: list = []
        for start in range(0, len(records), batch_size):
            chunk = [records[i] for i in range(start, min(start + batch_size, len(records)))]
            if self.generative:
                batch = self._with_mt(chunk, self.prompt_batch(chunk))
                inputs = {k: v.to(device) for k, v in batch.inputs.items()}
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
                if self.family is ArchitectureFamily.DECODER:
                    out = out[:, inputs["input_ids"].shape[1] :]
                texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
                predictions += [self.task.parse(t) for t in texts]
            else:
                batch = self._with_mt(chunk, self._encoder_batch(chunk, with_labels=False))
                outputs = model(**{k: v.to(device) for k, v in batch.inputs.items()})
                if self.task.labels:
                    predictions += [self.task.labels[i] for i in outputs.logits.argmax(-1).tolist()]
                else:
                    predictions += [
                        _span_text(s, e, m)
                        for s, e, m in zip(outputs.start_logits.cpu(), outputs.end_logits.cpu(), batch.meta)
                    ]
        return predictions


def _answer_tokens(answer: dict[str, Any], offsets: list[list[int]], sequence_ids: list[int | None]) -> tuple[int, int]:
    """Token span of an answer in the context; (0, 0) when truncation cut it off."""
    start_char, end_char = answer["answer_start"], answer["answer_start"] + len(answer["text"])
    context = [i for i, (seq, (a, b)) in enumerate(zip(sequence_ids, offsets)) if seq == 1 and a != b]
    if not context or offsets[context[-1]][1] < end_char:
        return 0, 0
    start = next(i for i in context if offsets[i][1] > start_char)
    end = next(i for i in reversed(context) if offsets[i][0] < end_char)
    return start, end


def _span_text(start_logits, end_logits, meta, max_answer_tokens: int = 30) -> str:
    """The best-scoring context span (start <= end, within the context) as a string."""
    context_tokens = [i for i, s in enumerate(meta["sequence_ids"]) if s == 1 and meta["offsets"][i][0] != meta["offsets"][i][1]]
    if not context_tokens:
        return ""
    idx = torch.tensor(context_tokens)
    scores = start_logits[idx][:, None] + end_logits[idx][None, :]
    length = idx[None, :] - idx[:, None]
    scores = scores.masked_fill((length < 0) | (length >= max_answer_tokens), float("-inf"))
    best = int(scores.flatten().argmax())
    s, e = context_tokens[best // len(idx)], context_tokens[best % len(idx)]
    return meta["context"][meta["offsets"][s][0] : meta["offsets"][e][1]]
