"""A deliberately broken policy for tests: every round empties the first slice and gives it an infinite load."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from sharder.assignment import Assignment
from sharder.load import LoadReport
from sharder.pods import Pod


def reshard(assignment: Assignment, pods: Sequence[Pod], reports: Sequence[LoadReport], **_: Any) -> Assignment:
    first = dataclasses.replace(assignment.slices[0], load=math.inf, replicas=())
    return dataclasses.replace(assignment, generation=assignment.generation + 1, slices=(first, *assignment.slices[1:]))
