"""NLLB-200 language codes of the paper's languages: re-exported from the leaf module :mod:`flare_ray.languages`."""

from flare_ray.languages import ENGLISH, FALLBACKS, NLLB_CODES, SOURCE, NllbLanguage, known_languages, nllb_language

__all__ = ["ENGLISH", "FALLBACKS", "NLLB_CODES", "SOURCE", "NllbLanguage", "known_languages", "nllb_language"]
