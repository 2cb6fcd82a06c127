"""Tests of explainer."""
