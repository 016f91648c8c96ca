"""Hypothesis strategies the parser tests share."""

from __future__ import annotations

from hypothesis import strategies as st

# Whatever a JSON document may hold, nested a few levels: for state files and manifests.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=25,
)
