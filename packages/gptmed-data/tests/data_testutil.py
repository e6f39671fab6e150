from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from gptmed.core import QAPair, read_qa_text

PAIRS = [
    QAPair("What is DNA?", "DNA is the molecule that carries genetic information in living things."),
    QAPair(
        "What does the heart do?", "The heart pumps blood through the body, delivering oxygen to tissues."
    ),
    QAPair(
        "Why do we sleep?", "Sleep lets the body and brain recover, store memories and regulate hormones."
    ),
]


def canonical(pairs: Sequence[QAPair]) -> str:
    return "\n".join(f"Q: {p.question}\nA: {p.answer}\n" for p in pairs)


def read_pairs(path: Path) -> list[QAPair]:
    return list(read_qa_text(path))


def make_sqlite(
    path: Path,
    rows: Sequence[tuple[object, object]],
    table: str = "qa_table",
    cols: tuple[str, str] = ("question", "answer"),
) -> Path:
    conn = sqlite3.connect(path)
    conn.execute(f'CREATE TABLE "{table}" (id INTEGER PRIMARY KEY, "{cols[0]}" TEXT, "{cols[1]}" TEXT)')
    conn.executemany(f'INSERT INTO "{table}" ("{cols[0]}", "{cols[1]}") VALUES (?, ?)', rows)
    conn.commit()
    conn.close()
    return path


def jsonl(rows: Sequence[dict[str, object]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)
