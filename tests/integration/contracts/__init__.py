"""Shared contract suites: every registered transport and target type passes the same tests."""
