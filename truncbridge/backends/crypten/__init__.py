"""The CrypTen protocol backend: a truncbridge plan computed on CrypTen's secret shares.

It imports only ``core`` and CrypTen — no frontend, no run driver — so a CrypTen program can use it
directly (``truncbridge.crypten`` is the public face). Modules: ``compat`` (CrypTen 0.4.1 on recent
torch), ``runner`` / ``batched`` (the plan's walk on shares, one wave of openings at a time),
``truncation`` / ``openings`` / ``shares`` (the protocols), ``material`` / ``dealer`` / ``dealing``
(correlated randomness from a separate dealer), ``randomness`` (AES-CTR streams for every draw),
``roles`` (which rank is owner, client, dealer).
"""
from .compat import alias_onnx_registration

# Every module here imports CrypTen lazily (``import crypten.mpc`` inside functions); the alias makes
# that import work on this torch however the package was reached (compat.py says why).
alias_onnx_registration()
