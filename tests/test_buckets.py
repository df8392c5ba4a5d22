"""Size buckets (ugcn.buckets) against their definition."""
from ugcn.buckets import bucket_size


def test_bucket_size_bounds():
    for n in [1, 255, 256, 257, 1000, 4097, 100_000, 123_457]:
        b = bucket_size(n)
        assert b >= n and b >= 256 and (n < 256 or b <= 1.25 * n + 1)
    assert {bucket_size(n) for n in range(16_385, 32_769)} == {20480, 24576, 28672, 32768}
