"""Registered trainers; importing this package registers every method and its config keys."""

from vlprompt.trainers import cocoop, coop, ctpt, genpt, linear_probe, mta, tda, tpt, zero, zsclip  # noqa: F401
