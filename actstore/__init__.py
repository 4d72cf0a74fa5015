"""actstore: the activation store (Zarr v3 + xarray + dask): schema, vocabulary, writer, query API."""
