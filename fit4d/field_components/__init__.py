"""Building blocks of the fields: the multi-resolution hash encoding, frequency encodings and MLPs."""
