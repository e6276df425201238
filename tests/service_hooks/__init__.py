"""Test-only entry points: the services' own `main`, with a window the production command line never opens.

`python -m tests.service_hooks.aggregator` records every decrypted sum;
`python -m tests.service_hooks.hospital_node` records every upload and can crash
mid-upload. Their settings (FEDXRAY_TEST_*) live in `hooks.py`, apart from the
production settings models, which have no such fields.
"""
