"""Test stand-in for Dassl (see ../README.md)."""
