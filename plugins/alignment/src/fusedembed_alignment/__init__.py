"""Karpathy & Fei-Fei's visual-semantic alignment (CVPR 2015, Section 3.1) as a fusedembed plugin."""

__version__ = "0.1.0"
