"""Tests of the documentation: the README's commands and the links of every page."""
