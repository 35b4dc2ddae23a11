"""One featurizer for the trainer and the scoring server: raw feature JSON -> hashed ids
with offsets per field and a dense matrix, a whole batch at a time.

* :mod:`featurize.hashing`: the stable id of a string value (blake2b, field-salted);
* :mod:`featurize.types`: :class:`~featurize.types.FeatureSpec` (from the config's
  ``features:``), :class:`~featurize.types.Features`, :class:`~featurize.types.Samples`;
* :mod:`featurize.core`: :class:`~featurize.core.Featurizer` (pyarrow + numpy);
* :mod:`featurize.reference`: the same contract, one record at a time in plain Python
  (the tests' oracle, and the server's way to name the field of a refused request).

It sits below both users and imports only the ground floor (``fluxrec``): no torch, no
pyflink. Nothing is imported here: ``import featurize`` stays cheap.
"""

__all__: list[str] = []
