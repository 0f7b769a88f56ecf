"""The file model every feature shares: what a file is (:mod:`.model`), which names are safe (:mod:`.names`), and
how a folder's files are found (:mod:`.scanner`) and followed (:mod:`.watch`). A leaf: it imports nothing of
overdrive but errors and paths, so the index and the transfer can both build on it without importing each other.
"""
