"""Fan-out keeps every item's result or exception."""

from deploylib.parallel import each


def test_results_and_exceptions_per_item():
    def fn(n):
        if n == 2:
            raise ValueError("two")
        return n * 10

    out = each([1, 2, 3], fn, key=str)
    assert out["1"] == 10 and out["3"] == 30
    assert isinstance(out["2"], ValueError)
    assert each([], fn, key=str) == {}
