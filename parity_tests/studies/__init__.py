"""Measurements that write results (parity_tests/results/<device>/), apart from the tests: each is
`python -m parity_tests.studies.<name> --out DIR`. The bounds of the tests cite what these measured."""
