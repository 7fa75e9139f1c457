import pytest

from rooflens.engines.stat_table import StatSpec, stats_from_table

TABLE = {
    "a": StatSpec("s", "seconds of {what}"),
    "b": StatSpec(description="a count"),
}


def test_values_get_the_tables_units_and_filled_descriptions_in_table_order():
    out = stats_from_table(TABLE, {"b": 3, "a": 1.5}, what="work")
    assert list(out) == ["a", "b"]
    assert (out["a"].value, out["a"].unit, out["a"].description) == (1.5, "s", "seconds of work")
    assert (out["b"].value, out["b"].unit) == (3, "")


def test_none_values_are_left_out_and_undescribed_keys_are_refused():
    assert list(stats_from_table(TABLE, {"a": None, "b": 0}, what="x")) == ["b"]
    with pytest.raises(KeyError, match="c"):
        stats_from_table(TABLE, {"c": 1})
