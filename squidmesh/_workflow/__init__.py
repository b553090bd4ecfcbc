"""Workflow definitions: Workflow, Trigger, Field, Step, Transition.

Definitions are immutable objects built once at import time of the user's
code. ``Workflow(...)`` checks the whole definition and raises one
``WorkflowDefinitionError`` listing every problem, so a person fixes a broken
definition in one pass instead of one error at a time.

- ``definitions``: the parts (Field, Trigger, Step, Transition), the
  constants and sentinels they use;
- ``checks``: the name rules and every problem of a definition;
- ``graph``: entry steps, dependency cycles and the step layout;
- ``workflow``: ``Workflow``, which checks, then derives from the graph.
"""

from .checks import MAX_NAME_LENGTH as MAX_NAME_LENGTH
from .checks import name_problem as name_problem
from .definitions import COMPLETE as COMPLETE
from .definitions import DEFAULT_FACTORY as DEFAULT_FACTORY
from .definitions import DEFAULT_NONE as DEFAULT_NONE
from .definitions import DEFAULT_NOW as DEFAULT_NOW
from .definitions import DEFAULT_TODAY as DEFAULT_TODAY
from .definitions import DEFAULT_VALUE as DEFAULT_VALUE
from .definitions import FIELD_TYPES as FIELD_TYPES
from .definitions import MANUAL_STEP_KINDS as MANUAL_STEP_KINDS
from .definitions import NOW_ISO8601 as NOW_ISO8601
from .definitions import STEP_KINDS as STEP_KINDS
from .definitions import TODAY_ISO8601 as TODAY_ISO8601
from .definitions import Field as Field
from .definitions import Step as Step
from .definitions import Transition as Transition
from .definitions import Trigger as Trigger
from .workflow import Workflow as Workflow
