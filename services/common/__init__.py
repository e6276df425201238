"""What the services share, in four rooms, each allowed to import only the rooms before it:

errors (the project's exceptions) < runtime < ml < secure_sum < protocol

`tests/common/test_rooms.py` checks the rule on every import.
"""
