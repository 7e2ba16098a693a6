"""Registered fairseq criterions. fairseq does not auto-import a user dir's criterions/: eat_plugin imports this."""

from eat_plugin.criterions import classification, pretraining  # noqa: F401
