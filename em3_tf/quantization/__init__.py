"""Quantization of item representations: k-means, residual (RQ) codes, nearest-item (VQ) codes
and product quantization (PQ) with asymmetric scores. One concept per module."""
