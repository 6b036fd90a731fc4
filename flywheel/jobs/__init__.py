"""The job mechanism, bottom to top: ``transport`` (huey lanes carrying ids), ``rows`` (job rows and their
state machine: create, claim, heartbeat, finish, cancel, reap) and ``runner`` (running one claimed job's
handler). It knows no job's body: ``flywheel.training.handlers`` maps kinds to handlers, and
``flywheel.worker`` puts the pieces together in a process. ``flywheel.policy`` and ``flywheel.schedules``
are clients above it that decide when to create jobs.
"""
