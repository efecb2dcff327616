"""heta_fast: fast, exact HETA token attribution for decoder-only language models.

``import heta_fast`` never imports transformers and never fails because the compiled extension is
missing; see ``python -m heta_fast.env`` for what was found.
"""

__version__ = "0.1.0"
