"""The deflated Sharpe ratio of a hold-out counts every configuration tried over every round
(docs/research.md: rounds 1 and 2 tried 19, round 2's repeat of a round-1 configuration counted
once; round 3's grid 32): the research scripts' N is that count, and a command takes a later
round's N."""

from __future__ import annotations

from bench import research_round3, research_runs


def test_n_counts_all_rounds_configurations_once() -> None:
    assert research_runs.TRIALS_BY_ROUND == {1: 12, 2: 7, 3: 32}
    assert research_runs.ALL_ROUNDS_TRIALS == 51
    repeated = {c.name.removeprefix("r2_") for c in research_runs.ROUND2} & {
        c.name for c in research_runs.CANDIDATES
    }
    assert repeated == {"h5_excess_top3_conf55"}
    tried = len(research_runs.CANDIDATES) + len(research_runs.ROUND2) - len(repeated)
    tried += len(research_round3.GRID)
    assert tried == research_runs.ALL_ROUNDS_TRIALS == research_round3.N_TRIALS
    assert len({c.name for c in research_round3.GRID}) == 32
