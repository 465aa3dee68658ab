"""The one line that says which role ended a job and why (the full traceback goes to the run's log file)."""

from __future__ import annotations

import re

# The role classes by the names Ray reports them under.
ROLES = {"RolloutWorker": "rollout worker", "RewardWorker": "reward worker", "GRPOLearner": "learner"}
MAX_CAUSE_CHARS = 400
_RAISED_IN = re.compile(r"ray::(?:[\w-]+:)?(\w+)\.")  # "ray::RewardWorker.__init__()" in a remote traceback
_CLASS_LINE = re.compile(r"^\s*class_name: (\w+)", re.MULTILINE)  # an actor that died without raising
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\w*: ")
_MODULE_PATH = re.compile(r"^(?:\w+\.)+(?=\w+: )")  # "reward_workers.backends." of a remote exception's type


def describe_failure(err: BaseException) -> str:
    """`<role>: <cause>` for the error that ended a job: the role whose code raised or died (the driver when
    none did) and the innermost cause as `Type: first line`."""
    import ray.exceptions

    if isinstance(err, ray.exceptions.RayTaskError):
        cause: BaseException | str = err
        while isinstance(cause, ray.exceptions.RayTaskError):
            cause = cause.cause
        found = _RAISED_IN.search(str(err))  # (a raised one is a subclass of its cause's type too: no function_name)
        return f"{_role(found.group(1) if found else vars(err).get('function_name', ''))}: {_one_line(cause)}"
    if isinstance(err, ray.exceptions.RayActorError):
        text = str(err)
        found = _RAISED_IN.search(text) or _CLASS_LINE.search(text)
        return f"{_role(found.group(1) if found else '')}: {_actor_cause(text)}"
    return f"driver: {_one_line(err)}"


def _role(where: str) -> str:
    """The role of a class name or a `Class.method` name."""
    class_name = where.split(".")[0].split(":")[-1]
    return ROLES.get(class_name, class_name or "a Ray actor")


def _one_line(err: BaseException | str) -> str:
    if isinstance(err, str):
        return _clip(err)
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return _clip(f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__)


def _actor_cause(text: str) -> str:
    """An actor's death: the exception its constructor raised (the last `Type: message` line of the remote
    traceback), else Ray's reason (the line after the actor's details)."""
    lines = text.splitlines()
    raised = [line for line in lines if _EXCEPTION_LINE.match(line)]
    if raised:
        return _clip(_MODULE_PATH.sub("", raised[-1]))
    reasons = [line.strip() for line in lines[1:] if line.strip() and not line.startswith("\t")]
    return _clip(reasons[0] if reasons else lines[0])


def _clip(line: str) -> str:
    return line if len(line) <= MAX_CAUSE_CHARS else line[: MAX_CAUSE_CHARS - 3] + "..."
