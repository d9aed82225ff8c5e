"""Encoding parallel records for each architecture family and head, and decoding predictions.

Heads (:func:`flare_ray.models.loading.resolve_head`; ``generative=None``: the family's default):

* task heads, for encoders (XLM-R) and encoder-decoders (mT5; the default for both): a
  classification head (label index) or a span head (start/end token of the answer; an answer
  cut off by truncation points at the first token and can never be predicted as a string, so it
  scores as wrong). Pair tasks are the tokenizer's pairs (``tokenizer(premise, hypothesis)``,
  ``tokenizer(question, context)``). mT5's classification head reads the hidden state of the
  last eos token, so every row of a batch must hold the same number of them (checked).
* generative heads, for decoders (Llama, Gemma; the default, as in the paper) and
  encoder-decoders (``generative=True``): a prompt and the answer string. The loss covers only
  the answer tokens (labels are -100 elsewhere). Decoder training sequences are
  ``prompt + answer + eos`` padded on the right; for decoders FLARE fuses exactly the positions
  labelled -100 that are real tokens, i.e. the prompt.

Truncation, one rule for every sequence of a kind:

* task heads: the tokenizer's right truncation to ``max_length``, of the context only for QA
  (``only_second``), of the longer segment for pairs (``longest_first``);
* encoder-decoder prompts (the encoder's input; the answer is the decoder's): ``max_length``
  tokens, cut from the left;
* decoders: ``max_length`` bounds the whole sequence, prompt and answer. The answer has a
  reserved budget ``A = min(answer_tokens, max_length // 2)`` (``answer_tokens``: the
  generation budget, ``training.max_new_tokens``; for classification at most the longest
  label's tokens and eos, since no longer answer is a label), every prompt the rest,
  ``P = max_length - A``: the target prompt in training, the target prompt at inference and
  the English source prompt alike are cut to ``P`` tokens from the left, keeping a leading BOS
  (the end of a prompt, the question and the ``Answer:`` cue, matters more than the start of a
  long context). A training answer longer than ``A`` is cut (and then ends without eos). So the
  prompt a decoder is trained on is token for token the prompt it generates from, and the
  source prompt it fuses with is the same in both.

Input-level fusion (``input_fusion=True``, the paper's ``[x_S; x_T]`` baseline): the model reads the
source, a separator and the target as one input, each side within its own budget so neither cuts the
other (the sequence is up to twice as long): for task heads each side is tokenised as above to
``max_length`` and the target's leading special token becomes the separator (XLM-R:
``<s> x_S </s></s> x_T </s>``; mT5: ``x_S </s> x_T </s>``), span labels and offsets point into the target
part; for generative heads the source prompt and the target prompt, each cut to the prompt budget.
Where the joined input would be longer than the model reads (``max_positions``: XLM-R's 512, so with
``max_length`` 512), the two sides split it: each side gets at most half of the model's positions (a
decoder's: half of what the answer leaves), the authors' per-side budget otherwise.

Every batch carries the source side (``source_input_ids``/``source_attention_mask``), framed
the same way as the target side (the English prompt for generative heads, the English
segments for task heads). With an MT tokenizer (FLARE-MT) it carries ``mt_input_ids`` /
``mt_attention_mask`` (FLARE-MT needs no source side: ``source=False``): exactly the text the model reads, after its truncation (the
kept part of the prompt; of each segment, tokenised as the MT tokenizer's pair), in the MT
model's tokenization, tagged with the target language's NLLB-200 code (load the tokenizer with
:func:`flare_ray.models.loading.load_mt_tokenizer`; a tokenizer set to another language is
refused). The MT tokenization is cut only at the MT model's own limit (``model_max_length``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from flare_ray.fusion import ArchitectureFamily
from flare_ray.models.loading import resolve_head

from .base import Task

IGNORE = -100
DEFAULT_ANSWER_TOKENS = 32  # the default generation budget (training.max_new_tokens)
_NO_LIMIT = 1_000_000  # tokenizers without a length limit report ~1e30 as model_max_length


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]  # what the model's forward (or generate) takes
    meta: list[dict[str, Any]]  # per record: what decoding needs (span offsets, contexts)


class TaskEncoder:
    """Encodes records of ``task`` for a model of ``family`` with ``tokenizer`` (see the module docstring)."""

    def __init__(
        self,
        task: Task,
        tokenizer,
        family: ArchitectureFamily | str,
        max_length: int,
        source: bool = True,
        mt_tokenizer=None,
        *,
        generative: bool | None = None,
        answer_tokens: int = DEFAULT_ANSWER_TOKENS,
        input_fusion: bool = False,
        max_positions: int | None = None,
        xmixup: bool = False,
    ):
        """``source``: add the English side (FLARE). ``mt_tokenizer``: add the text the model reads in the
        MT model's tokenization as ``mt_input_ids`` (FLARE-MT, whose MT encoder reads the target), from
        :func:`~flare_ray.models.loading.load_mt_tokenizer`. ``generative``: the model's head, True for an LM
        head that writes the answer, False for a task head, None for the family's default
        (:func:`~flare_ray.models.loading.resolve_head`); it must match the model ``load_model`` loaded.
        ``answer_tokens``: the answer budget reserved in decoder sequences (pass the generation budget,
        ``training.max_new_tokens``). ``input_fusion``: source and target in one input (see the module docstring).
        ``max_positions``: the longest input the model reads
        (:func:`~flare_ray.models.positions.max_input_positions`; None: unbounded); ``max_length`` must fit in
        it, and input fusion's two sides share it. ``xmixup``: X-Mixup's inputs besides the source, where the
        records have them: the English answer span (``source_start_positions``/``source_end_positions``, QA
        training) and the back-translation of the target into English (``back_translation_input_ids``/
        ``back_translation_attention_mask``, from ``back_translation_<field>`` columns)."""
        self.task = task
        self.xmixup = xmixup
        self.tokenizer = tokenizer
        self.family = ArchitectureFamily(family)
        self.max_length = max_length
        self.with_source = source
        self.input_fusion = input_fusion
        if input_fusion and (source or mt_tokenizer is not None):
            raise ValueError("input fusion reads the source inside the input; it takes no separate source or MT input")
        self.mt_tokenizer = mt_tokenizer
        self.head = resolve_head(self.family, None if generative is None else "generative" if generative else "task")
        self.generative = self.head == "generative"
        if self.generative and tokenizer.eos_token_id is None:
            raise ValueError("generative encoding needs a tokenizer with an eos token")
        if answer_tokens < 1:
            raise ValueError(f"answer_tokens: {answer_tokens}; expected at least 1")
        self.answer_budget = min(answer_tokens, max_length // 2)
        if self.generative and task.labels:  # no valid answer is longer than the longest label (and eos)
            longest = max(len(tokenizer(" " + label, add_special_tokens=False).input_ids) for label in task.labels)
            self.answer_budget = min(self.answer_budget, longest + 1)
        # The one prompt budget of every prompt (target in training and at inference, source).
        self.prompt_budget = (
            max_length - self.answer_budget if self.family is ArchitectureFamily.DECODER else max_length
        )
        self.side_length = max_length  # what a task head's input (each side of input fusion) is cut to
        if max_positions is not None:
            if max_length > max_positions:
                raise ValueError(
                    f"training.max_length: {max_length} tokens is more than the model reads "
                    f"({max_positions} positions); expected at most {max_positions}"
                )
            if input_fusion:  # the joined input must fit too: each side at most half of what the model reads
                self.side_length = min(max_length, max_positions // 2)
                if self.family is ArchitectureFamily.DECODER:
                    self.prompt_budget = min(self.prompt_budget, (max_positions - self.answer_budget) // 2)
                else:
                    self.prompt_budget = min(self.prompt_budget, max_positions // 2)
        if mt_tokenizer is not None:
            _check_mt_language(mt_tokenizer, task.language)
            if not getattr(tokenizer, "is_fast", False):
                raise ValueError(
                    f"FLARE-MT: {type(tokenizer).__name__} is no fast tokenizer; the MT text is the text the model "
                    "reads after truncation, found with the fast tokenizer's offsets"
                )

    # -- batches -------------------------------------------------------------
    def train_batch(self, records: Sequence[dict[str, Any]]) -> Batch:
        """Inputs with labels (the loss) for a training or validation-loss step."""
        if not self.generative:
            return self._encoder_batch(records, with_labels=True)
        if self.family is ArchitectureFamily.ENCODER_DECODER:
            batch = self.prompt_batch(records)
            answers = self.tokenizer([self.task.answer(r) for r in records], padding=True, return_tensors="pt")
            batch.inputs["labels"] = answers.input_ids.masked_fill(answers.attention_mask == 0, IGNORE)
            return batch
        return self._decoder_batch(records)

    def predict_batch(self, records: Sequence[dict[str, Any]]) -> Batch:
        """The inputs :meth:`predict` feeds the model: prompts (generative) or unlabelled inputs (task heads)."""
        if self.generative:
            return self.prompt_batch(records)
        return self._encoder_batch(records, with_labels=False)

    def prompt_batch(self, records: Sequence[dict[str, Any]]) -> Batch:
        """Generative: the target prompts (padded on the tokenizer's side) and the source prompts."""
        prompts = [self._read_prompt(r) for r in records]
        padded = self.tokenizer.pad({"input_ids": [ids for ids, _ in prompts]}, return_tensors="pt")
        inputs = {"input_ids": padded.input_ids, "attention_mask": padded.attention_mask}
        if self.with_source:
            inputs.update(self._source_prompts(records))
        if self.mt_tokenizer is not None:
            inputs.update(self._mt_inputs([[text for _, text in prompts]]))
        return Batch(inputs, [{"id": r["id"]} for r in records])

    # -- task heads ------------------------------------------------------------
    def _sides(self, records, side: str) -> list[list[str]]:
        return [[r[f"{side}_{f}"] for r in records] for f in self.task.text_fields]

    def _truncation(self, segments: int) -> str | bool:
        return "only_second" if segments == 2 and not self.task.labels else True

    def _tokenize(self, texts: list[list[str]], **kwargs):
        return self.tokenizer(
            *texts,
            truncation=self._truncation(len(texts)),
            max_length=self.side_length,
            padding=True,
            return_tensors="pt",
            **kwargs,
        )

    def _encoder_batch(self, records, with_labels: bool) -> Batch:
        if self.input_fusion:
            return self._fused_encoder_batch(records, with_labels)
        qa = self.task.labels is None
        segments = self._sides(records, "target")
        with_offsets = qa or self.mt_tokenizer is not None
        target = self._tokenize(segments, return_offsets_mapping=with_offsets)
        offsets = target.pop("offset_mapping").tolist() if with_offsets else None
        inputs: dict[str, torch.Tensor] = {"input_ids": target.input_ids, "attention_mask": target.attention_mask}
        if self.family is ArchitectureFamily.ENCODER_DECODER and not qa:
            self._check_eos(target.input_ids)
        meta: list[dict[str, Any]] = [{"id": r["id"]} for r in records]
        if qa:
            starts, ends = [], []
            for i, r in enumerate(records):
                sequence_ids = target.sequence_ids(i)
                meta[i].update(context=r["target_context"], offsets=offsets[i], sequence_ids=sequence_ids)
                start, end = _answer_tokens(r["target_answers"][0], offsets[i], sequence_ids)
                starts.append(start)
                ends.append(end)
            if with_labels:
                inputs["start_positions"] = torch.tensor(starts)
                inputs["end_positions"] = torch.tensor(ends)
        elif with_labels:
            inputs["labels"] = torch.tensor([self.task.labels.index(r["label"]) for r in records])
        if self.with_source:
            source = self._tokenize(self._sides(records, "source"), return_offsets_mapping=qa and self.xmixup)
            inputs.update(source_input_ids=source.input_ids, source_attention_mask=source.attention_mask)
            if qa and self.xmixup:
                inputs.update(self._source_spans(records, source) if with_labels else {})
        if self.xmixup and all(f"back_translation_{f}" in records[0] for f in self.task.text_fields):
            back = self._tokenize(self._sides(records, "back_translation"))
            inputs.update(
                back_translation_input_ids=back.input_ids, back_translation_attention_mask=back.attention_mask
            )
        if self.mt_tokenizer is not None:
            read = [
                [_kept_text(text, offsets[i], target.sequence_ids(i), k) for i, text in enumerate(texts)]
                for k, texts in enumerate(segments)
            ]
            inputs.update(self._mt_inputs(read))
        return Batch(inputs, meta)

    @staticmethod
    def _source_spans(records, source) -> dict[str, torch.Tensor]:
        """The English answers' token spans (X-Mixup's source span loss), where every record has one."""
        offsets = source.pop("offset_mapping").tolist()
        if not all(r.get("source_answers") for r in records):
            return {}
        spans = [
            _answer_tokens(r["source_answers"][0], offsets[i], source.sequence_ids(i)) for i, r in enumerate(records)
        ]
        return {
            "source_start_positions": torch.tensor([a for a, _ in spans]),
            "source_end_positions": torch.tensor([b for _, b in spans]),
        }

    def _fused_encoder_batch(self, records, with_labels: bool) -> Batch:
        """Input-level fusion for task heads: ``[x_S; sep; x_T]``, each side truncated on its own."""
        qa, tok = self.task.labels is None, self.tokenizer
        rows, meta, starts, ends = [], [], [], []
        for r in records:
            source = self._tokenize([[r[f"source_{f}"]] for f in self.task.text_fields])
            target = self._tokenize([[r[f"target_{f}"]] for f in self.task.text_fields], return_offsets_mapping=qa)
            src, tgt = source.input_ids[0].tolist(), target.input_ids[0].tolist()
            separator = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
            if separator is not None and tgt[0] in (tok.cls_token_id, tok.bos_token_id):
                tgt = [separator] + tgt[1:]  # the target's leading special token becomes the separator
            rows.append(src + tgt)
            meta.append({"id": r["id"]})
            if qa:
                shift, offsets, sequence_ids = (
                    len(src),
                    target.pop("offset_mapping")[0].tolist(),
                    target.sequence_ids(0),
                )
                start, end = _answer_tokens(r["target_answers"][0], offsets, sequence_ids)
                starts.append(start + shift if (start, end) != (0, 0) else 0)
                ends.append(end + shift if (start, end) != (0, 0) else 0)
                meta[-1].update(
                    context=r["target_context"],
                    offsets=[[0, 0]] * shift + offsets,
                    sequence_ids=[None] * shift + sequence_ids,
                )
        width = max(map(len, rows))
        inputs = {
            "input_ids": torch.tensor([row + [tok.pad_token_id] * (width - len(row)) for row in rows]),
            "attention_mask": torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows]),
        }
        if self.family is ArchitectureFamily.ENCODER_DECODER and not qa:
            self._check_eos(inputs["input_ids"])
        if with_labels and qa:
            inputs.update(start_positions=torch.tensor(starts), end_positions=torch.tensor(ends))
        elif with_labels:
            inputs["labels"] = torch.tensor([self.task.labels.index(r["label"]) for r in records])
        return Batch(inputs, meta)

    def _check_eos(self, input_ids: torch.Tensor) -> None:
        """mT5's classification head reads the last eos of each row and needs as many in every row."""
        counts = (input_ids == self.tokenizer.eos_token_id).sum(1)
        if int(counts.min()) < 1 or int(counts.max()) != int(counts.min()):
            raise ValueError(
                f"{self.task.name}: an encoder-decoder classification head needs the same number of eos tokens "
                f"(at least one) in every row; the rows of this batch have {counts.tolist()} (does a text hold "
                f"{self.tokenizer.eos_token!r}?)"
            )

    # -- generative heads --------------------------------------------------------
    def _decoder_batch(self, records) -> Batch:
        tok, rows, label_rows, read = self.tokenizer, [], [], []
        for r in records:
            answer = tok(" " + self.task.answer(r), add_special_tokens=False).input_ids + [tok.eos_token_id]
            answer = answer[: self.answer_budget]
            prompt, text = self._read_prompt(r)
            rows.append(prompt + answer)
            label_rows.append([IGNORE] * len(prompt) + answer)
            read.append(text)
        width = max(map(len, rows))
        pad = lambda seq, value: seq + [value] * (width - len(seq))  # noqa: E731 (right padding)
        inputs = {
            "input_ids": torch.tensor([pad(r, tok.pad_token_id) for r in rows]),
            "attention_mask": torch.tensor([pad([1] * len(r), 0) for r in rows]),
            "labels": torch.tensor([pad(r, IGNORE) for r in label_rows]),
        }
        if self.with_source:
            inputs.update(self._source_prompts(records))
        if self.mt_tokenizer is not None:
            inputs.update(self._mt_inputs([read]))
        return Batch(inputs, [{"id": r["id"]} for r in records])

    def _source_prompts(self, records) -> dict[str, torch.Tensor]:
        ids = [self._fit_prompt(r, "source")[0] for r in records]
        source = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        return {"source_input_ids": source.input_ids, "source_attention_mask": source.attention_mask}

    def _read_prompt(self, record) -> tuple[list[int], str | None]:
        """The prompt the model reads: the target's, or with input fusion the source's and then the target's."""
        ids, text = self._fit_prompt(record, "target")
        if not self.input_fusion:
            return ids, text
        source, _ = self._fit_prompt(record, "source")
        bos = self.tokenizer.bos_token_id
        return source + (ids[1:] if bos is not None and ids[:1] == [bos] else ids), None

    def _fit_prompt(self, record, side: str) -> tuple[list[int], str | None]:
        """A side's prompt cut to the prompt budget, and (FLARE-MT, target side) the text of the kept tokens."""
        text = self.task.prompt(record, side)
        want_text = side == "target" and self.mt_tokenizer is not None
        encoded = self.tokenizer(text, return_offsets_mapping=want_text)
        ids, start = self._fit(encoded["input_ids"], self.prompt_budget)
        if not want_text:
            return ids, None
        if start == 0:
            return ids, text
        chars = [a for a, b in encoded["offset_mapping"][start:] if a != b]
        return ids, text[chars[0] :] if chars else ""

    def _fit(self, ids: list[int], budget: int) -> tuple[list[int], int]:
        """Cut a prompt to ``budget`` tokens from the left, keeping a leading BOS: the end of a
        prompt (the question, the 'Answer:' cue) matters more than the start of a long context.
        Also the index in ``ids`` of the first token kept after the BOS (0: nothing was cut)."""
        if len(ids) <= budget:
            return ids, 0
        head = ids[:1] if ids[0] == self.tokenizer.bos_token_id else []
        start = len(ids) - (budget - len(head))
        return head + ids[start:], start

    # -- FLARE-MT ----------------------------------------------------------------
    def _mt_inputs(self, segments: list[list[str]]) -> dict[str, torch.Tensor]:
        """``segments``: per segment (one, or a pair's two), the text of each record."""
        limit = self.mt_tokenizer.model_max_length
        limit = limit if limit is not None and limit < _NO_LIMIT else None
        mt = self.mt_tokenizer(
            *segments,
            truncation=self._truncation(len(segments)) if limit else False,
            max_length=limit,
            padding=True,
            return_tensors="pt",
        )
        return {"mt_input_ids": mt.input_ids, "mt_attention_mask": mt.attention_mask}

    # -- prediction --------------------------------------------------------------
    @torch.no_grad()
    def predict(self, model, records: Sequence[dict[str, Any]], batch_size: int = 32, max_new_tokens: int = 32) -> list:
        """Predictions (label or answer strings; ``None`` for a generated non-label) for ``records``."""
        device = next(model.parameters()).device
        predictions: list = []
        for start in range(0, len(records), batch_size):
            chunk = [records[i] for i in range(start, min(start + batch_size, len(records)))]
            batch = self.predict_batch(chunk)
            inputs = {k: v.to(device) for k, v in batch.inputs.items()}
            if self.generative:
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
                if self.family is ArchitectureFamily.DECODER:
                    out = out[:, inputs["input_ids"].shape[1] :]
                texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
                predictions += [self.task.parse(t) for t in texts]
            else:
                predictions += self.decode(model(**inputs), batch)
        return predictions

    def decode(self, outputs, batch: Batch) -> list:
        """A task head's predictions from its ``outputs`` on ``batch`` (a label per row, or an answer span's text):
        the same from a batch with labels (the evaluation's one pass for metric and loss)."""
        if self.task.labels:
            return [self.task.labels[i] for i in outputs.logits.argmax(-1).tolist()]
        return [
            _span_text(s, e, m) for s, e, m in zip(outputs.start_logits.cpu(), outputs.end_logits.cpu(), batch.meta)
        ]


def flatten(inputs: dict[str, torch.Tensor], source: bool = True) -> dict[str, torch.Tensor]:
    """A decoder training batch without padding (``training.padding_free``): transformers'
    ``DataCollatorWithFlattening`` puts the target's sequences end to end in one row (``input_ids``, ``labels``,
    ``position_ids`` restarting at 0 at each sequence; no ``attention_mask``, which transformers reads as packed
    sequences: a block-diagonal causal mask, flash attention's varlen kernels). Each sequence's first label
    becomes -100 (it is a prompt token's: it was). ``source``: the source prompts too (``source_input_ids``,
    ``source_position_ids``), else they stay padded (the source cache reads padded rows); FLARE-MT's input
    stays padded (an encoder reads it)."""
    from transformers import DataCollatorWithFlattening

    collate = DataCollatorWithFlattening(return_tensors="pt")

    def real(ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        rows = [row[keep] for row, keep in zip(ids, mask.bool())]
        if any(len(row) == 0 for row in rows):  # the collator would drop the sequence, and the alignment with it
            raise ValueError("a padding-free batch holds a sequence without tokens")
        return rows

    mask = inputs["attention_mask"]
    ids, labels = real(inputs["input_ids"], mask), real(inputs["labels"], mask)
    flat = collate([{"input_ids": i, "labels": y} for i, y in zip(ids, labels)])
    out = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "labels")}
    out.update(input_ids=flat["input_ids"], labels=flat["labels"], position_ids=flat["position_ids"])
    if source and "source_input_ids" in inputs:
        sides = collate([{"input_ids": i} for i in real(inputs["source_input_ids"], inputs["source_attention_mask"])])
        del out["source_attention_mask"]
        out.update(source_input_ids=sides["input_ids"], source_position_ids=sides["position_ids"])
    return out


def _check_mt_language(mt_tokenizer, language: str) -> None:
    """Refuse an NLLB tokenizer set to another language than the target's (its default is eng_Latn)."""
    from flare_ray.languages import nllb_language

    code = nllb_language(language).code
    src_lang = getattr(mt_tokenizer, "src_lang", None)
    known = mt_tokenizer.convert_tokens_to_ids(code) not in (None, mt_tokenizer.unk_token_id)
    if src_lang != code and known:
        raise ValueError(
            f"FLARE-MT: the MT tokenizer tags text as {src_lang!r}, but the target language {language!r} is "
            f"{code!r} in NLLB-200; load it with flare_ray.models.loading.load_mt_tokenizer(name, {language!r})"
        )


def _kept_text(text: str, offsets: list[list[int]], sequence_ids: list[int | None], segment: int) -> str:
    """The part of a segment's text that its tokens (after truncation) cover."""
    spans = [(a, b) for seq, (a, b) in zip(sequence_ids, offsets) if seq == segment and a != b]
    return text[spans[0][0] : spans[-1][1]] if spans else ""


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
    context_tokens = [
        i for i, s in enumerate(meta["sequence_ids"]) if s == 1 and meta["offsets"][i][0] != meta["offsets"][i][1]
    ]
    if not context_tokens:
        return ""
    idx = torch.tensor(context_tokens)
    scores = start_logits[idx][:, None] + end_logits[idx][None, :]
    length = idx[None, :] - idx[:, None]
    scores = scores.masked_fill((length < 0) | (length >= max_answer_tokens), float("-inf"))
    best = int(scores.flatten().argmax())
    s, e = context_tokens[best // len(idx)], context_tokens[best % len(idx)]
    return meta["context"][meta["offsets"][s][0] : meta["offsets"][e][1]]
