"""Sample task plugins for maskprobe: the paper's tasks, registered through the ``maskprobe.tasks``
entry-point group exactly as a third-party plugin would register its own (see pyproject.toml)."""
