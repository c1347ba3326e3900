"""Files on disk that several processes share: atomic, durable writes (``files``) and the
one-owner folder lock (``lock``).  Standard library only, so every package (data, core,
train, sweep) can use it without importing the others."""
