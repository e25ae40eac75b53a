"""The public surface of `localmodel.fetch` is exactly `__all__` (httpx style), and the
shipped sources satisfy the Source protocol."""

import localmodel.fetch as fetch
from localmodel.sources.base import Source
from localmodel.sources.http import HTTPSource
from localmodel.sources.local import LocalSource


def test_all_lists_every_public_name_sorted() -> None:
    public = sorted(name for name in vars(fetch) if not name.startswith("_")
                    and not isinstance(getattr(fetch, name), type(fetch)))
    assert fetch.__all__ == sorted(fetch.__all__)
    assert set(fetch.__all__) == set(public)


def test_sources_implement_the_protocol() -> None:
    assert isinstance(LocalSource("/tmp", {}), Source)
    assert isinstance(HTTPSource("http://example.com/m.bin", {}), Source)
