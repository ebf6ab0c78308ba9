"""fusedembed-mlimages: Tencent ML-Images (Wu et al., 2019), the multi-label training of a
pre-activation ResNet-101 on 11,166 classes and its transfer, as the paper describes it and as
the released TensorFlow code does it. The hooks live in :mod:`.plugin`, the module the entry
point names."""

__version__ = "0.1.0"
