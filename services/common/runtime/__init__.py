"""The runtime room: what every service process does the same way, and nothing about federated learning.

Settings loading (files and environment, unknown keys refused), TLS material and gRPC channel options, the gRPC
server with its call budgets, health and signals, Prometheus metrics, atomic files and the gRPC statuses of the
project's errors. It may import only `services.common.errors`; every other room may import it.
"""
