"""Registered trainers; importing this package registers every method and its config keys."""

from vlprompt.trainers import cocoop, coop, genpt, linear_probe, tpt, zsclip  # noqa: F401
