"""Mask files: ``maskfile`` (the safetensors format, read and written), ``masksets`` (opening and checking a set
of masks together), ``layout`` (model order and layer roles), ``counting`` (bit counts over many masks),
``inspection`` (``maskprobe inspect``'s view of a checkpoint or a mask).
"""
