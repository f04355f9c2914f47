"""bench/inherit_bench.py's reproduction check: when is a search's first group done?"""

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _journal(path: Path, events: list[tuple], tail: str = "") -> Path:
    lines = [json.dumps({"event": kind, "arch": list(arch)}) for kind, arch in events]
    path.write_text("\n".join(lines) + "\n" + tail)
    return path


def test_first_group_done(tmp_path):
    sys.path.insert(0, str(BENCH))
    from inherit_bench import first_group_done

    a, b, c = (2, 2, 128, 512), (4, 2, 128, 512), (2, 2, 256, 512)
    j = tmp_path / "journal.jsonl"
    assert first_group_done(j) is None  # no journal yet
    assert first_group_done(_journal(j, [("start", a), ("start", b)])) is None
    assert first_group_done(_journal(j, [("start", a), ("start", b), ("done", a)])) is None
    done = first_group_done(_journal(j, [("start", a), ("start", b), ("done", b), ("done", a)]))
    assert [tuple(e["arch"]) for e in done] == [b, a]
    # a resumed search journals the group's starts again: each candidate counts once
    resumed = [("start", a), ("start", b), ("start", a), ("start", b)]
    assert first_group_done(_journal(j, resumed + [("done", a)])) is None
    done = first_group_done(_journal(j, resumed + [("done", a), ("done", b)]))
    assert [tuple(e["arch"]) for e in done] == [a, b]
    # the next group's events are not the first group's; a line cut short is ignored
    later = [("start", a), ("done", a), ("start", c), ("done", c)]
    done = first_group_done(_journal(j, later, tail='{"event": "do'))
    assert [tuple(e["arch"]) for e in done] == [a]
