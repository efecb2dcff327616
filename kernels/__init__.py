"""Triton kernels of heta_fast, installed as ``heta_fast.kernels`` (setup.py maps this folder).

Modules here import triton at import time, so nothing is imported eagerly: load them with
``heta_fast._triton.load_kernel_module("<name>")`` (or ``import heta_fast.kernels.<name>``) once
``heta_fast._triton.triton_available()`` is True. Never import this folder as top-level ``kernels``.
"""
