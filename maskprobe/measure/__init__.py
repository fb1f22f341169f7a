"""Measuring masks: ``overlap`` (IoU / IoMin per layer), ``analysis`` (the formulas), ``evaluation`` and
``ablation`` (a task's metric under a mask, and with parts of masks removed), ``compare`` (one
:class:`~maskprobe.measure.compare.CompareReport` from a set of files), ``thresholds`` (``--fail-*`` checks),
``groups`` (``--group``: masks from several runs).
"""
