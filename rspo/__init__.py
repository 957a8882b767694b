"""rspo: Regularized Self-Play Policy Optimization (arXiv 2503.00030) as a resumable workflow.

Importing ``rspo`` is cheap: heavy libraries (torch, transformers, vllm) are imported by the
modules that need them, and vllm only when the ``vllm`` generation backend is asked for.
"""

__version__ = "0.1.0"
