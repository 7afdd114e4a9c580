"""The recorder's state tables (``states.py``): what the docs show is the tables, a pair
missing from a table raises, terminal states stay terminal, and every state is reachable."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meetstream_live.adapters.recording import states
from meetstream_live.adapters.recording.states import (
    TABLES,
    PartInput,
    PartState,
    StateError,
    advance,
    doc_block,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "recording.md"
BLOCK = re.compile(r"<!-- states:begin -->\n(.*?)\n<!-- states:end -->", re.S)


def test_the_docs_show_the_tables() -> None:
    match = BLOCK.search(DOC.read_text(encoding="utf-8"))
    assert match is not None, "docs/recording.md lost its states markers"
    assert match.group(1) == doc_block(), "regenerate: states.doc_block()"


def _types(table: Mapping[tuple[enum.Enum, enum.Enum], enum.Enum]) -> tuple[type, type]:
    (state, event), _ = next(iter(table.items()))
    return type(state), type(event)


@pytest.mark.parametrize("name", list(TABLES))
def test_every_state_is_reachable_and_the_last_one_is_terminal(name: str) -> None:
    table = TABLES[name]
    state_type, _ = _types(table)
    first = next(iter(state_type))  # the first member is where it starts
    reached = {first}
    frontier = [first]
    while frontier:
        here = frontier.pop()
        for (state, _event), after in table.items():
            if state is here and after not in reached:
                reached.add(after)
                frontier.append(after)
    assert reached == set(state_type)
    last = list(state_type)[-1]  # CLOSED, ENDED, OVER: nothing leaves them
    assert not [key for key in table if key[0] is last]


@pytest.mark.parametrize("name", list(TABLES))
@given(data=st.data())
def test_a_missing_pair_raises(name: str, data: st.DataObject) -> None:
    table = TABLES[name]
    state_type, input_type = _types(table)
    state = data.draw(st.sampled_from(list(state_type)))
    for _ in range(data.draw(st.integers(1, 8))):
        event = data.draw(st.sampled_from(list(input_type)))
        if (state, event) in table:
            state = advance(table, state, event)
        else:
            with pytest.raises(StateError, match=event.name):
                advance(table, state, event)


def test_a_part_is_closed_once() -> None:
    state = advance(states.PART, PartState.OPEN, PartInput.ROTATION_DUE)
    state = advance(states.PART, state, PartInput.BOX_AT_CUT)
    with pytest.raises(StateError):
        advance(states.PART, state, PartInput.ENDED)
