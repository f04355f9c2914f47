"""A run's journal: the append-only event log (`journal.jsonl`) and the evaluator
that reads finished candidates back from it and journals the rest as they train.

Events are JSON objects, one a line: `latency` (an architecture's measured median),
`start`, `done` and `failed` (a candidate, with its trials and timing), `speedup`
(the pick against T). Resuming is replaying them."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from enum import StrEnum
from pathlib import Path

from bortsearch.model.arch import Arch
from bortsearch.runio import write_atomic
from bortsearch.search.algorithm import DONE, FAILED, Evaluation, summarise, w_coefficient
from bortsearch.search.candidates import CandidateSettings, HeldOut, Timing
from bortsearch.search.config import SearchConfig
from bortsearch.search.executors import LocalExecutor
from bortsearch.train.step import LossConfig


class Event(StrEnum):
    """The kinds of journal line (each line's "event")."""

    LATENCY = "latency"  # an architecture's measured median latency
    START = "start"  # a candidate began training
    DONE = "done"  # a candidate finished: its trials and timing (Status.DONE)
    FAILED = "failed"  # a candidate failed: the reason, any trials (Status.FAILED)
    SPEEDUP = "speedup"  # the pick against T, measured


class Journal:
    """The append-only event log of a run; each line is flushed and fsynced."""

    def __init__(self, path: Path):
        self.path = path

    def events(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by a kill: everything after it is lost anyway
        return out

    def append(self, event: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({**event, "time": round(time.time(), 3)}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def repair(self) -> None:
        """Drop a partial last line left by a kill, so appends stay parseable."""
        if self.path.is_file():
            good = self.events()
            write_atomic(self.path, "".join(json.dumps(e) + "\n" for e in good))


def arch_key(arch: Arch) -> list[int]:
    return list(arch.size)


def inference_text(value: float, kind: str) -> str:
    return f"{value / 1e9:7.3f} GFLOPs" if kind == "analytic" else f"{value * 1e3:7.2f} ms"


def json_num(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def from_json_num(x):
    return math.nan if x is None else float(x)


class JournalledEvaluator:
    """The evaluator `algorithm1` calls: candidates the journal already holds are
    read back, the rest are trained by a `CandidateTrainer`, and every start and
    finish is journalled and shown (bar over candidates, a line per candidate)."""

    def __init__(self, journal: Journal, events: list[dict], teacher, data, proxies: dict,
                 cfg: SearchConfig, progress: bool, log, reference: HeldOut,
                 steps: int | None = None, phase: str = "search", executor=None):
        self.journal, self.teacher, self.data = journal, teacher, data
        self.executor = executor or LocalExecutor()
        self.proxies, self.cfg, self.progress, self.log = proxies, cfg, progress, log
        self.reference, self.phase = reference, phase
        self.steps = steps or cfg.steps
        self.finished = {tuple(e["arch"]): e for e in events
                         if e["event"] in (Event.DONE, Event.FAILED)
                         and e.get("phase", "search") == phase
                         and e.get("steps", cfg.steps) == self.steps}
        self.bar = None

    def __call__(self, archs: list[Arch]) -> dict[Arch, Evaluation]:
        from bortsearch.runio import progress_bar

        out = {a: self._replay(self.finished[a.size]) for a in archs if a.size in self.finished}
        todo = [a for a in archs if a not in out]
        self.log(f"{len(archs)} candidates; {len(out)} already done")
        if not todo:
            return out
        cfg = self.cfg
        settings = CandidateSettings(steps=self.steps, lrs=tuple(cfg.lrs), loss=LossConfig(),
                                     seed=cfg.seed, seeds=cfg.seeds, init=cfg.init,
                                     layers=cfg.inherit_layers,
                                     error=cfg.error, group_size=cfg.group_size,
                                     dtype=cfg.dtype, halving=cfg.halving)
        self.bar = progress_bar(total=len(archs), initial=len(out), desc="candidates",
                                unit="cand", disable=not self.progress,
                                bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} "
                                           "[{elapsed}<{remaining}, {rate_fmt}]")
        checkpoints = self.journal.path.parent / "candidates" / f"{self.phase}-{self.steps}"
        out.update(self.executor(self.teacher, self.data, settings, self.reference, todo,
                                 self._on_start, self._on_done, self._on_step, checkpoints,
                                 cfg.checkpoint_every))
        self.bar.close()
        self.bar = None
        return out

    def _replay(self, event: dict) -> Evaluation:
        """The journalled trials, scored with this run's error metric."""
        if event["event"] == Event.FAILED and not event.get("trials"):
            return Evaluation(FAILED, reason=event.get("reason", ""))
        trials = [(t[0], t[1], *map(from_json_num, t[2:])) for t in event["trials"]]
        return summarise(trials, self.cfg.lrs, self.cfg.error, event.get("reason", ""))

    def _tag(self, arch: Arch) -> dict:
        return {"arch": arch_key(arch), "phase": self.phase, "steps": self.steps}

    def _on_start(self, arch: Arch) -> None:
        self.journal.append({"event": Event.START, **self._tag(arch)})

    def _on_done(self, arch: Arch, ev: Evaluation, timing: Timing | None) -> None:
        self.journal.append({"event": ev.status, **self._tag(arch), "error": json_num(ev.error),
                             "best_lr": ev.best_lr, "reason": ev.reason,
                             "trials": [[t[0], t[1], *map(json_num, t[2:])] for t in ev.trials],
                             **({"timing": dataclasses.asdict(timing)} if timing else {})})
        p, t = self.proxies[arch], self.proxies[self.teacher.arch]
        line = (f"{arch.label():<32} params {p.params / 1e6:7.2f}M  "
                f"{inference_text(p.inference, self.cfg.inference)}  ")
        noise = f" ± {ev.error_se:.4f}" if math.isfinite(ev.error_se) else ""
        line += (f"{self.cfg.error} {ev.error:.4f}{noise}  W {w_coefficient(p, t, ev.error):.4g}  "
                 f"lr {ev.best_lr:g}" if ev.status == DONE else f"FAILED: {ev.reason}")
        if self.phase == "confirm":
            line = f"confirmed ({self.steps} steps) " + line
        (self.bar.write if self.bar is not None and self.progress else self.log)(line)

    def _on_step(self, n: int) -> None:
        if self.bar is not None:  # fractions of a candidate; never past the total
            self.bar.update(min(n / self.steps, self.bar.total - self.bar.n))
