"""Attacks run against FedXray's own protections (issue 34): gradient inversion on what each party holds, with
more to come (membership inference, adversarial examples). Every result is on SYNTHETIC data."""
