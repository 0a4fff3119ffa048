"""Triton kernels of fastgrpo. Import only where triton is installed.

The sources live in the repository's top-level ``kernels/`` folder, linked here (``fastgrpo/kernels/<op>.py`` →
``kernels/<op>.py``; a wheel carries the files themselves). ``kernels/`` has no ``__init__.py`` on purpose: a
regular package named ``kernels`` at the repository root would shadow Hugging Face's ``kernels`` distribution
(which transformers imports) whenever the root is on ``sys.path`` (``python -m pytest``, ``torchrun -m ...``).
"""
