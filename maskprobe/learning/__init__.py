"""Learning masks: the settings to the mask file's tensors.

``selection`` (which parameters get a mask), ``gates``/``kernels``/``fused``/``maskstep`` (the hard
Gumbel-sigmoid step: reference math, CPU kernels, compiled kernels, the flat logits and Adam), ``engine`` and
``sharded`` (one process; ``--shard``), ``training`` (the one loop), ``controller`` (``--keep``), ``runs`` (a
``train`` command's masks, files and state), ``statefile`` (``--resume``), ``memory`` (the estimate before a
run), ``distributed``, ``batching``, ``masked``, ``fitting`` (base networks for the sample tasks).
"""
