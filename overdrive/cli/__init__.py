"""The typer shell: :mod:`.root` (the ``overdrive`` app, global options, ``keygen``), one module per feature
(:mod:`.index`, :mod:`.transfer`, :mod:`.media`, :mod:`.audio`, :mod:`.doctor`) and :mod:`.options` (shared option
parsing and output). Thin: options -> typed config -> an app or feature call -> one-line errors.
"""
