"""Operator actions and submissions as specifications."""
