"""Tasks: the contract a task plugin implements (:mod:`.contract`), how plugins are found and loaded
(:mod:`.plugins`) and how ``--task-arg`` values are typed (:mod:`.args`). ``from maskprobe.tasks import Task``
and the other names below work as they did when this was one module.
"""

from .contract import (
    ENTRY_POINT_GROUP,
    REQUIRED_METHODS,
    Task,
    TaskContext,
    TaskInfo,
    TaskRef,
    contract_problems,
    describe_task,  # fmt: skip
    setup_tasks,
)
from .plugins import NAME_ARG, discover_tasks, installed_task_name, load_object, load_task, task_arguments, task_class

__all__ = ["ENTRY_POINT_GROUP", "NAME_ARG", "REQUIRED_METHODS", "Task", "TaskContext", "TaskInfo", "TaskRef",
           "contract_problems", "describe_task", "discover_tasks", "installed_task_name", "load_object", "load_task",
           "setup_tasks", "task_arguments", "task_class"]  # fmt: skip
