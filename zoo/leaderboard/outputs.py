"""Every generated file at once: write them all (`zoo leaderboard`) or say which lag the records (`--check`).

The outputs are results/LEADERBOARD.md (zoo.leaderboard.render), its PNG figures under results/plots/
(zoo.leaderboard.figures, unless plots are off), the GLUE config index of each fine-tuned model
(zoo.leaderboard.glue_index) and, when a README is given, its marked tables (zoo.leaderboard.readme).
"""

from __future__ import annotations

from pathlib import Path

from zoo.leaderboard import figures, glue_index, readme
from zoo.leaderboard.load import LEADERBOARD_FILE, Board
from zoo.leaderboard.render import SECTIONS, leaderboard_markdown, section
from zoo.leaderboard.text import Links, read_text_exact, write_if_changed


def stale_leaderboard_tables(board: Board) -> list[str]:
    """Which sections of results/LEADERBOARD.md differ from what the records give ([] if up to date)."""
    path = board.root / LEADERBOARD_FILE
    expected = leaderboard_markdown(board)
    current = read_text_exact(path) if path.is_file() else ""
    if current == expected:
        return []
    links = Links(board.root)
    stale = [name for name in SECTIONS if section(board, name, links, 3) not in current]
    return stale or ["header"]


def check(board: Board, readme_path: Path | None) -> list[str]:
    """One message per stale table, stale or missing GLUE config index, or missing figure; [] when up to date."""
    lb = board.root / LEADERBOARD_FILE
    problems = [f"{lb}: table '{name}' is stale" for name in stale_leaderboard_tables(board)]
    problems += glue_index.stale_indexes(board)
    problems += [f"{job.path}: figure missing" for job in figures.plot_jobs(board) if not job.path.is_file()]
    if readme_path is not None:
        text = read_text_exact(readme_path)
        problems += [f"{readme_path}: table '{name}' is stale"
                     for name in readme.stale_readme_tables(text, board, readme_path)]
    return problems


def write_leaderboard(board: Board) -> bool:
    """Write results/LEADERBOARD.md, the GLUE config indexes and (when plots are on) the figures;
    True if the leaderboard markdown changed."""
    if board.plots:
        figures.write_plots(board)
    glue_index.write_indexes(board)
    return write_if_changed(board.root / LEADERBOARD_FILE, leaderboard_markdown(board))
