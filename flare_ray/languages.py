"""NLLB-200 language codes of the paper's languages, with explicit fallbacks.

Task language codes (NusaX ``jav``, XNLI ``sw``, TyDiQA ``ko``, ...) map to the
NLLB-200 codes that the tokenizer knows as special tokens (``jav_Latn``,
``swh_Latn``, ``kor_Hang``). Languages NLLB-200 lacks get another language's
code, named in :data:`FALLBACKS` with the reason; the pipeline logs it and
records it in the provenance of every split it writes.

A leaf module (it imports nothing of flare_ray): the translation pipeline
(:mod:`flare_ray.translate`), the MT tokenizer of FLARE-MT
(:func:`flare_ray.models.loading.load_mt_tokenizer`) and the task encoder
(:mod:`flare_ray.tasks.encoding`) all read this one table.

"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE = "eng_Latn"  # English, the source side of every task

NLLB_CODES: dict[str, str] = {
    # NusaX
    "ace": "ace_Latn",
    "ban": "ban_Latn",
    "bjn": "bjn_Latn",
    "bug": "bug_Latn",
    "eng": "eng_Latn",
    "ind": "ind_Latn",
    "jav": "jav_Latn",
    "min": "min_Latn",
    "sun": "sun_Latn",
    # XNLI (myXNLI's my; the paper's fourteen: ar, ru, sw, ur below and above)
    "sw": "swh_Latn",
    "ur": "urd_Arab",
    "my": "mya_Mymr",
    "bg": "bul_Cyrl",
    "de": "deu_Latn",
    "el": "ell_Grek",
    "es": "spa_Latn",
    "fr": "fra_Latn",
    "hi": "hin_Deva",
    "th": "tha_Thai",
    "tr": "tur_Latn",
    "vi": "vie_Latn",
    "zh": "zho_Hans",
    # TyDiQA-GoldP (sw: as above)
    "ar": "arb_Arab",
    "bn": "ben_Beng",
    "en": "eng_Latn",
    "fi": "fin_Latn",
    "id": "ind_Latn",
    "ko": "kor_Hang",
    "ru": "rus_Cyrl",
    "te": "tel_Telu",
}

#: Languages NLLB-200 does not cover: the code that stands in, and why.
FALLBACKS: dict[str, tuple[str, str]] = {
    "mad": ("ind_Latn", "NLLB-200 has no Madurese; Indonesian stands in, as in the paper"),
    "nij": ("ind_Latn", "NLLB-200 has no Ngaju; Indonesian stands in, as in the paper"),
    "bbc": (
        "ind_Latn",
        "NLLB-200 has no Toba Batak; Indonesian stands in. The paper excluded bbc from its MT "
        "experiments, so these results have no counterpart in the paper",
    ),
}


@dataclass(frozen=True)
class NllbLanguage:
    """A task language and the NLLB-200 code used for it."""

    language: str  # the task's code, e.g. "jav"
    code: str  # the NLLB-200 code, e.g. "jav_Latn"
    fallback: str | None = None  # why another language's code stands in; None if NLLB has the language

    def describe(self) -> dict[str, str | None]:
        return {"language": self.language, "nllb_code": self.code, "fallback": self.fallback}


def known_languages() -> list[str]:
    return sorted({*NLLB_CODES, *FALLBACKS})


def nllb_language(language: str) -> NllbLanguage:
    """The NLLB-200 code for a task language (a fallback where NLLB lacks it); ValueError if unknown."""
    if language in NLLB_CODES:
        return NllbLanguage(language, NLLB_CODES[language])
    if language in FALLBACKS:
        code, reason = FALLBACKS[language]
        return NllbLanguage(language, code, fallback=reason)
    raise ValueError(f"no NLLB-200 code for language {language!r}; expected one of {known_languages()}")


#: The source side of every task.
ENGLISH = NllbLanguage("en", SOURCE)
