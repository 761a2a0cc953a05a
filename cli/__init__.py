"""Thin command-line shells: parse, call the libraries, print. No logic lives here."""
