"""Progress lines as a log file shows them: format, pace, rates that leave start-up out, an honest ETA."""

from __future__ import annotations

import io

import pytest
import torch

from medalign import progress as progress_module
from medalign.progress import Progress, format_duration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", c)
    return c


def test_lines_at_the_interval_with_rate_and_eta(clock):
    out = io.StringIO()
    p = Progress("", 100, "step", rate_unit="volumes", extra=lambda: ["loss 2.31"], stream=out, live=False, every_s=30)
    p.start_line("starting")
    clock.now += 50  # the first step carries the start-up: no rate from it
    p.update(1, items=8)
    for step in range(2, 11):  # then 9 steps of 2 s, 8 volumes each
        clock.now += 2
        p.update(step, items=8)
    clock.now += 20  # 30 s after the last line: the next update writes one
    p.update(11, items=8)
    lines = out.getvalue().splitlines()
    assert lines[0] == "step 0/100 (0.0%) · starting"
    assert lines[1] == "step 1/100 (1.0%) · loss 2.31"  # 50 s after the start line; no rate yet
    # 10 steps after the first in 38 s: 80 volumes / 38 s; 89 steps left at 3.8 s a step
    assert lines[2] == f"step 11/100 (11.0%) · {80 / 38:.1f} volumes/s · loss 2.31 · ETA {format_duration(89 * 3.8)}"
    assert len(lines) == 3
    clock.now += 1
    p.close()
    assert out.getvalue().splitlines()[-1] == f"step 11/100 (11.0%) · {80 / 39:.1f} volumes/s · loss 2.31 · done in 1m29s"


def test_a_named_command_counts_its_own_unit(clock):
    out = io.StringIO()
    with Progress("prep", 3, "studies", stream=out, live=False, every_s=0) as p:
        for _ in range(3):
            clock.now += 4
            p.update()
    assert out.getvalue().splitlines() == ["prep: 1/3 studies (33.3%)",
                                           "prep: 2/3 studies (66.7%) · 4.0 s/study · ETA 4s",
                                           "prep: 3/3 studies (100.0%) · 4.0 s/study · ETA 0s",
                                           "prep: 3/3 studies (100.0%) · 4.0 s/study · done in 12s"]


def test_short_disabled_and_failed_work_writes_nothing(clock):
    """Within one interval nothing is written, so a short command's output and its one-line errors stay as they were."""
    out = io.StringIO()
    Progress("embed", 10, "volumes", stream=out, live=False, enabled=False).update(5)
    p = Progress("embed", 10, "volumes", stream=out, live=False, every_s=30)
    p.start_line("note")
    p.update(5)
    p.close(finished=False)
    short = Progress("embed", 10, "volumes", stream=out, live=False, every_s=30)
    clock.now += 29
    short.update(10)
    short.close()
    assert out.getvalue() == ""


@pytest.mark.parametrize("seconds, text", [(42, "42s"), (185, "3m05s"), (5 * 3600 + 12 * 60, "5h12m"), (2 * 86400 + 3 * 3600, "2d03h"),
                                           (float("nan"), "?")])
def test_durations_as_people_read_them(seconds, text):
    assert format_duration(seconds) == text


def test_the_interval_reaches_child_processes(monkeypatch):
    monkeypatch.delenv("MEDALIGN_PROGRESS_INTERVAL", raising=False)
    assert progress_module.interval() == 30.0
    progress_module.set_interval(5)
    assert progress_module.interval() == 5.0 and float(__import__("os").environ["MEDALIGN_PROGRESS_INTERVAL"]) == 5.0
    with pytest.raises(ValueError):
        progress_module.set_interval(0)


def test_throughput_is_logged_on_written_steps_only(monkeypatch):
    """``train/volumes_per_s`` is logged only on the steps Lightning writes (logging a Python number
    copies it to the device, which then waits for the queued work), as the mean rate since the
    previous one: 8 volumes x 2 ranks every 0.5 s is 32 volumes/s, the start-up step left out."""
    from types import SimpleNamespace

    import medalign.train.module as module_mod

    module = module_mod.PretrainModule.__new__(module_mod.PretrainModule)
    torch.nn.Module.__init__(module)
    module._last_step_time = None
    clock = {"t": 0.0}
    monkeypatch.setattr(module_mod.time, "perf_counter", lambda: clock["t"])
    trainer = SimpleNamespace(global_step=0, log_every_n_steps=5, world_size=2, should_stop=False)
    module._trainer = trainer
    module._fabric = None
    logged = []
    module.log = lambda name, value, **kw: logged.append((trainer.global_step, name, value))
    for step in range(12):
        trainer.global_step, clock["t"] = step, 10.0 + 0.5 * step + (3.0 if step else 0.0)  # the first step is slow
        module._log_throughput(8)
    assert [(s, n) for s, n, _ in logged] == [(4, "train/volumes_per_s"), (9, "train/volumes_per_s")]
    assert [round(v, 6) for _, _, v in logged] == [32.0, 32.0]
