"""Tests of broker.upstream."""
