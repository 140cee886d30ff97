"""Common library of the loyalty platform."""
