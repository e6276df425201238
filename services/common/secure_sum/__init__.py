"""The secure-sum room: everything that turns an update or a set of counts into something only a sum can open.

Field packing, quantization and the update codec, noise, CKKS parameters and the ciphertext codec, pairwise masks,
and the class and evaluation counts pooled under them. It may import `services.common.errors` and the `runtime`
and `ml` rooms (evaluation counts are masked here); only the `protocol` room may import it from within `common`.
"""
