"""Benchmarks and load scripts for the timer service (see README, "Benchmarks")."""
