"""Base utilities every layer may use: files and provenance (``files``), the allocator setting (``allocator``)."""
