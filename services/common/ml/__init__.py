"""The machine-learning room: models, their flat parameter layout, what a round trains, the initial weights,
evaluation counts and classification metrics, the head refit.

It knows nothing of the network or of the secure sum. It may import `services.common.errors` and the `runtime`
room; the `secure_sum` and `protocol` rooms may import it. `choices` holds the names the settings read without
importing torch.
"""
