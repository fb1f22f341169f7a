"""Opening checkpoints: a path (or ``--model module:factory``) to a frozen model and its identity.

``checkpoints`` (the one entry, :func:`~maskprobe.loading.checkpoints.load_checkpoint`), ``formats`` (what a file
is, by its content), ``weights`` (state dicts into a module), ``architecture`` (the model a state dict needs),
``hf_folder`` (Hugging Face folders, the ``hf`` extra), ``digest`` (a checkpoint's identity: its weights' bytes).
"""
