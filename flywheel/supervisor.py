"""The supervisor of one worker's lanes: it starts a process per lane, restarts one that dies (after a short
backoff, within a budget), records the lanes' liveness for ``/health``, and puts back the jobs of dead workers.

Past ``LABELWHEEL_LANE_RESTARTS`` restarts of a lane within ``RESTART_WINDOW_SECONDS`` a lane is crash-looping
(an out-of-memory kill on every start, a broken database): the supervisor stops its other lanes and exits
non-zero, so whatever runs it (``serve``, systemd, Kubernetes) finds out instead of a worker limping on.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType

from flywheel.jobs import lanes, rows
from flywheel.jobs.runner import worker_name
from flywheel.jobs.transport import Transport
from flywheel.schedules import run_due_schedules
from storage.db import Database
from storage.models import utcnow
from storage.settings import Settings

logger = logging.getLogger(__name__)

RESTART_WINDOW_SECONDS = 600.0
MAX_RESTART_DELAY_SECONDS = 30.0
REAP_SECONDS = 30.0  # stale jobs go back to the queue within job_stale_seconds + this
STOP_GRACE_SECONDS = 30.0
GAVE_UP = 1


def exit_reason(exitcode: int | None) -> str:
    """How a process ended, in words: ``killed by SIGKILL``, ``exited with code 1``."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


@dataclass
class Lane:
    name: str
    record: lanes.LaneRecord
    process: BaseProcess | None = None
    stops: deque[float] = field(default_factory=deque)  # monotonic times of its stops within the window
    restart_at: float | None = None


class Supervisor:
    """Runs ``target(lane)`` in a forked process per lane until stopped by a signal (0) or out of restarts (1)."""

    def __init__(self, names: tuple[str, ...], *, target: Callable[[str], None], settings: Settings) -> None:
        self.target = target
        self.settings = settings
        self.name = worker_name()
        self.host = socket.gethostname()
        self.db = Database(settings.resolved_database_url)
        self.transport = Transport(settings.resolved_queue_url)
        self.context = multiprocessing.get_context("fork")
        now = utcnow()
        self.lanes = [Lane(name, lanes.LaneRecord(lane=name, worker=None, started_at=now)) for name in names]
        self.stopping = False
        self.beat_seconds = min(5.0, settings.job_stale_seconds / 3)
        self.reap_seconds = min(REAP_SECONDS, settings.job_stale_seconds)

    def run(self) -> int:
        """Recover what a dead worker left (running jobs, lost queue messages, missed schedules), start the lanes
        and watch them."""
        self._housekeeping("recovery", self._recover)
        for lane in self.lanes:
            self._start(lane)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self._record()
        started = time.monotonic()
        next_beat, next_reap = started + self.beat_seconds, started + self.reap_seconds
        while not self.stopping:
            due = [next_beat, next_reap, *(lane.restart_at for lane in self.lanes if lane.restart_at is not None)]
            wait(self._sentinels(), timeout=max(min(due) - time.monotonic(), 0.0))
            if self.stopping:
                break
            changed = False
            for lane in self.lanes:
                if lane.process is not None and not lane.process.is_alive():
                    if not self._stopped(lane):
                        return self._give_up(lane)
                    changed = True
            now = time.monotonic()
            for lane in self.lanes:
                if lane.restart_at is not None and lane.restart_at <= now:
                    self._start(lane, restart=True)
                    changed = True
            if changed or now >= next_beat:
                self._record()
                next_beat = now + self.beat_seconds
            if now >= next_reap:
                self._housekeeping("requeueing stale jobs", lambda: self._requeue(include_queued=False))
                next_reap = now + self.reap_seconds
        self._stop_lanes()
        self._housekeeping("stopping", lambda: lanes.forget_lanes(self.db, supervisor=self.name))
        logger.info("worker %s stopped", self.name)
        return 0

    def _start(self, lane: Lane, *, restart: bool = False) -> None:
        self.db.dispose()  # a forked child must not share this process's database or queue connections
        self.transport.close()
        process = self.context.Process(target=_lane_main, args=(self.target, lane.name), name=f"labelwheel-{lane.name}")
        process.start()
        lane.process, lane.restart_at = process, None
        lane.record = replace(
            lane.record,
            worker=f"{self.host}:{process.pid}",
            started_at=utcnow(),
            restarts=lane.record.restarts + restart,
        )
        logger.info("lane %s started (pid %s)", lane.name, process.pid)

    def _stopped(self, lane: Lane) -> bool:
        """A lane died: put its job back, record why, and plan its restart; False when the budget is spent."""
        assert lane.process is not None
        lane.process.join()
        pid, reason = lane.process.pid, exit_reason(lane.process.exitcode)
        lane.process = None
        lane.record = replace(lane.record, worker=None, last_exit=reason, last_exit_at=utcnow())
        self._housekeeping("requeueing the lane's job", lambda: self._requeue(include_queued=True))
        now = time.monotonic()
        while lane.stops and lane.stops[0] < now - RESTART_WINDOW_SECONDS:
            lane.stops.popleft()
        budget = self.settings.lane_restarts
        if len(lane.stops) >= budget:
            logger.error(
                "lane %s (pid %s) %s, its stop number %d within %d minutes; past LABELWHEEL_LANE_RESTARTS=%d the "
                "worker stops its other lanes and exits with code %d",
                lane.name, pid, reason, len(lane.stops) + 1, RESTART_WINDOW_SECONDS // 60, budget, GAVE_UP,
            )  # fmt: skip
            return False
        lane.stops.append(now)
        delay = min(2.0 ** (len(lane.stops) - 1), MAX_RESTART_DELAY_SECONDS)
        lane.restart_at = now + delay
        logger.warning(
            "lane %s (pid %s) %s; restarting it in %g s (restart %d of %d allowed within %d minutes)",
            lane.name, pid, reason, delay, len(lane.stops), budget, RESTART_WINDOW_SECONDS // 60,
        )  # fmt: skip
        return True

    def _give_up(self, failed: Lane) -> int:
        why = f"the worker stopped: lane {failed.name} used up its restarts (LABELWHEEL_LANE_RESTARTS)"
        failed.record = replace(failed.record, last_exit=f"{failed.record.last_exit}; {why}")
        self._stop_lanes()
        for lane in self.lanes:
            if lane is not failed:
                lane.record = replace(lane.record, worker=None, last_exit=why, last_exit_at=utcnow())
        self._record()  # rows stay, down: /health reports the lanes down and why
        return GAVE_UP

    def _stop_lanes(self) -> None:
        """Stop the live lanes, then put back the jobs they were running (a successor resumes them at once)."""
        running = [lane.process for lane in self.lanes if lane.process is not None and lane.process.is_alive()]
        for process in running:
            process.terminate()
        for process in running:
            process.join(STOP_GRACE_SECONDS)
            if process.is_alive():
                process.kill()
                process.join()
        self._housekeeping("requeueing the lanes' jobs", lambda: self._requeue(include_queued=False))

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        for lane in self.lanes:
            if lane.process is not None and lane.process.is_alive():
                lane.process.terminate()

    def _sentinels(self) -> list[int]:
        return [lane.process.sentinel for lane in self.lanes if lane.process is not None]

    def _record(self) -> None:
        self._housekeeping(
            "recording lane heartbeats",
            lambda: lanes.record_lanes(
                self.db,
                supervisor=self.name,
                lanes=[lane.record for lane in self.lanes],
                stale_seconds=self.settings.job_stale_seconds,
            ),
        )

    def _requeue(self, *, include_queued: bool) -> None:
        stale = self.settings.job_stale_seconds
        for job_id, kind in rows.reap_jobs(self.db, stale_seconds=stale, include_queued=include_queued):
            self.transport.enqueue_job(job_id, kind)

    def _recover(self) -> None:
        self._requeue(include_queued=True)
        run_due_schedules(self.db, self.transport)

    def _housekeeping(self, what: str, action: Callable[[], object]) -> None:
        """Database work of the supervisor: a failure (the database restarting) is logged and tried again later;
        it never takes the lanes down."""
        try:
            action()
        except Exception:
            logger.exception("worker %s: %s failed; trying again later", self.name, what)


def _lane_main(target: Callable[[str], None], lane: str) -> None:
    """A lane process starts with the default signal handlers, not the supervisor's (the consumer sets its own)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    target(lane)
