"""The only place that composes features: a sharing node (:mod:`.share`: scanner + index node + file server) and a
fetch by name (:mod:`.fetch`: index lookup + transfer + registering the copy). Library functions a program can call;
the CLI is one such program. They print nothing and install no signal handler.
"""
