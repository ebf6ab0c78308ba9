"""fusedembed-dualpath: Dual-Path Convolutional Image-Text Embedding with Instance Loss
(Zheng et al.). The hooks live in :mod:`.plugin`, the module the entry point names."""

__version__ = "0.1.0"
