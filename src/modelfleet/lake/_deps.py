"""The lake's optional dependencies, imported once with an install hint when they are missing."""

from __future__ import annotations

from modelfleet.errors import ConfigError

try:
    import fsspec  # type: ignore[import-untyped]
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv
    import pyarrow.dataset as pa_dataset
    import pyarrow.json as pa_json
    import pyarrow.parquet as pq
    from fsspec.core import url_to_fs  # type: ignore[import-untyped]
except ImportError as err:  # pragma: no cover - depends on the installation
    raise ConfigError(
        f"the data lake needs pyarrow and fsspec ({err}): pip install 'modelfleet[lake]'"
    ) from None

__all__ = ["fsspec", "pa", "pa_csv", "pa_dataset", "pa_json", "pc", "pq", "url_to_fs"]
