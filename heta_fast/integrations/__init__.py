"""Adapters to other attribution tools. Each module imports its tool only when used, so ``import heta_fast``
never needs them; they come with the ``integrations`` extra (``pip install 'heta_fast[integrations]'``).

- :mod:`heta_fast.integrations.captum`: results as Captum's ``LLMAttributionResult`` (``Attribution.to_captum()``).
- :mod:`heta_fast.integrations.inseq`: importing it registers ``"heta"`` as an Inseq attribution method.
"""

INSTALL_HINT = "pip install 'heta_fast[integrations]'"
