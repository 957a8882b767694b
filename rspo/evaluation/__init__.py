"""Evaluation of every iterate: alpaca_eval outputs and annotations, AlpacaEval metrics (win rate,
length-controlled win rate), Self-BLEU, and the summary tables/figure (docs/evaluation.md).

Modules: ``outputs`` (model_outputs.json), ``annotate`` (pairwise annotation), ``alpaca_judges``
(alpaca_eval's weighted GPT-4-turbo protocol), ``metrics``, ``self_bleu``, ``summary``.
"""
