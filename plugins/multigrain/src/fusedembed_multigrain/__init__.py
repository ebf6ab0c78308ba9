"""MultiGrain (Berman, Jégou, Vedaldi, Kokkinos, Douze 2019) as a fusedembed plugin."""

__version__ = "0.1.0"
