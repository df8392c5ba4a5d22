"""Size buckets: pad arrays to a few sizes so that XLA compiles once per bucket, not once per size."""
from __future__ import annotations


def bucket_size(n: int, minimum: int = 256) -> int:
    """Smallest size ``>= n`` of the form ``m · 2^k`` with ``m in {4, 5, 6, 7}`` (at most 25% padding).

    Four buckets per doubling keep recompilations rare while wasting little memory.
    """
    n = max(int(n), minimum, 1)
    k = max(n.bit_length() - 3, 0)
    m = -(-n // (1 << k))
    return m << k
